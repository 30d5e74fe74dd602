"""``hbseg serve --stdio``: a warm worker that segments one request after another with the models kept loaded.

Every ``hbseg segment`` run imports torch, starts CUDA and loads the model before the first voxel; a worker pays
that once. Requests are JSON objects, one per line on stdin::

    {"id": "a1", "image": "scan.nrrd", "output": "out/a1", "options": {"tta": false, "model": "ct-demo"}}
    {"cancel": "a1"}          stop request a1 (running: at the next window batch; queued: before it starts)
    {"shutdown": true}        cancel what runs and what waits, then exit

``options`` are the options of ``hbseg segment``, by their long names (``"tta": false`` is ``--no-tta``,
``"batch_size": 2`` is ``--batch-size 2``, ``"format": "nrrd"``), parsed and checked by the same parser. On stdout:
``{"ready": true, ...}`` once the worker has started, then per request ``hbseg segment --progress json``'s progress
lines (each with the request's ``"id"``) and one final line::

    {"id": "a1", "status": "ok", "summary": "out/a1/summary.json"}
    {"id": "a1", "status": "error", "message": "scan.nrrd: file not found"}
    {"id": "a1", "status": "cancelled", "message": "cancelled by the user"}

A bad request gets an error line and the worker goes on. When stdin closes, the requests already sent are served
and the worker exits (status 0). Models stay loaded per bundle, device and option set (the most recent
:data:`MAX_LOADED_MODELS`); nothing else is ever printed on stdout (diagnostics go to stderr).
"""

from __future__ import annotations

import argparse
import collections
import json
import queue
import sys
import threading
import traceback
from typing import IO, Any

from .. import __version__
from ..errors import CancelledError, ConfigError, HepatoblastomaSegError
from ..progress import JsonLinesProgress

#: Predictors kept loaded at once (each holds its network on its device; the oldest is dropped first).
MAX_LOADED_MODELS = 2
#: Request keys besides ``options``.
REQUEST_KEYS = ("id", "image", "output", "options")
#: ``hbseg segment`` options a request may not set: the worker chooses them.
RESERVED_OPTIONS = ("image", "output", "manifest", "progress")

EPILOG = """\
protocol (one JSON object per line; see the module documentation of HepatoblastomaSegLib.cli.serve):
  stdin:  {"id": "a1", "image": "scan.nrrd", "output": "out/a1", "options": {"tta": false}}
          {"cancel": "a1"}      {"shutdown": true}
  stdout: {"ready": true, ...}, progress lines {"event": "progress", "id": "a1", ...}, then per request
          {"id": "a1", "status": "ok", "summary": "out/a1/summary.json"}  (or "error"/"cancelled" with "message")

  options are those of 'hbseg segment' by long name: {"model": "ct-demo", "tta": false, "device": "cpu",
  "overlap": 0.5, "format": "nrrd", ...}. The model stays loaded between requests with the same model, device and
  options; the worker exits when stdin closes.

example:
  printf '%s\\n' '{"id": "1", "image": "ct.nii.gz", "output": "r1"}' | hbseg serve --stdio"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="a warm worker: segment requests read as JSON lines, models kept loaded",
        description="Segment one request after another (JSON lines on stdin, progress and results as JSON lines on "
                    "stdout) with the models kept loaded: the start-up of torch, CUDA and the model is paid once. "
                    "Used by the 3D Slicer module.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stdio", action="store_true", required=True,
                        help="read requests from stdin and answer on stdout (the only transport)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..allocator import retain_freed_memory

    retain_freed_memory()  # every request allocates the same large arrays again: reuse mapped memory
    # stdout carries the protocol only: anything else that prints there (a third-party library) goes to stderr.
    protocol, sys.stdout = sys.stdout, sys.stderr
    try:
        return Worker(sys.stdin, protocol).serve()
    finally:
        sys.stdout = protocol


class _RaisingParser(argparse.ArgumentParser):
    """An argparse parser whose errors are :class:`ConfigError` (a bad request must not end the worker)."""

    def error(self, message: str):
        raise ConfigError(f"options: {message}")


def segment_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(root, segment) parsers with ``hbseg segment``'s own arguments: the options are defined once, there."""
    from . import segment

    root = _RaisingParser(prog="hbseg", add_help=False)
    subparsers = root.add_subparsers(dest="command")
    segment.register(subparsers)
    return root, subparsers.choices["segment"]


def option_arguments(options: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    """``{"tta": false, "batch_size": 2}`` -> ``["--no-tta", "--batch-size", "2"]``, by the parser's own actions."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    args: list[str] = []
    for key, value in options.items():
        if key in RESERVED_OPTIONS or key not in actions or key == "help":
            raise ConfigError(f"options: '{key}' is not an option a request can set")
        action = actions[key]
        long = next(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ConfigError(f"options: '{key}' must be true or false, not {value!r}")
            args.append(long if value else "--no-" + long[2:])
        elif action.nargs == 0:  # store_true
            if not isinstance(value, bool):
                raise ConfigError(f"options: '{key}' must be true or false, not {value!r}")
            if value:
                args.append(long)
        elif value is not None:
            args += [long, str(value)]
    return args


class _RequestProgress(JsonLinesProgress):
    """``hbseg segment --progress json`` lines, each tagged with the request's id, written under the worker's lock."""

    def __init__(self, stream: IO[str], request_id: Any, lock: threading.Lock):
        super().__init__(stream)
        self.request_id, self.lock = request_id, lock

    def emit(self, event: str, stage: str, fraction: float, eta_s: float | None, message: str = "") -> None:
        record = {"event": event, "id": self.request_id, "stage": stage, "fraction": round(fraction, 4),
                  "eta_s": None if eta_s is None else round(eta_s, 2), "message": message}
        with self.lock:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()


class Worker:
    """Reads requests on a thread (so a cancel arrives while a request runs) and serves them in order here."""

    def __init__(self, stdin: IO[str], stdout: IO[str]):
        self.stdin, self.stdout = stdin, stdout
        self.lock = threading.Lock()
        self.requests: queue.Queue = queue.Queue()
        self.cancelled: set[str] = set()
        self.shutdown = threading.Event()
        self.current: tuple[Any, _RequestProgress] | None = None
        self.predictors: collections.OrderedDict = collections.OrderedDict()
        self.parser, self.segment_parser = segment_parser()

    # ------------------------------------------------------------------------------------------------ output
    def answer(self, record: dict) -> None:
        with self.lock:
            self.stdout.write(json.dumps(record, default=str) + "\n")
            self.stdout.flush()

    # ------------------------------------------------------------------------------------------------ input
    def read(self) -> None:
        for number, line in enumerate(iter(self.stdin.readline, ""), start=1):
            if not line.strip():
                continue
            try:
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as exc:
                self.requests.put({"_invalid": f"line {number} is not a JSON object: {exc}"})
                continue
            if "cancel" in message:
                self.cancel(str(message["cancel"]))
            elif message.get("shutdown"):
                self.shutdown.set()
                self.cancel_all()
                break
            else:
                self.requests.put(message)
        self.requests.put(None)  # end of input

    def cancel(self, request_id: str) -> None:
        self.cancelled.add(request_id)
        current = self.current
        if current is not None and str(current[0]) == request_id:
            current[1].cancel()

    def cancel_all(self) -> None:
        current = self.current
        if current is not None:
            current[1].cancel()

    # ------------------------------------------------------------------------------------------------ serving
    def serve(self) -> int:
        import torch  # noqa: F401 - paid once, before the first request

        from ..infer import predictor  # noqa: F401

        self.answer({"ready": True, "library_version": __version__, "pid": _pid()})
        threading.Thread(target=self.read, name="hbseg-serve-stdin", daemon=True).start()
        while True:
            request = self.requests.get()
            if request is None:
                return 0
            if "_invalid" in request:
                self.answer({"id": None, "status": "error", "message": request["_invalid"]})
                continue
            request_id = request.get("id")
            if self.shutdown.is_set() or str(request_id) in self.cancelled:
                self.answer({"id": request_id, "status": "cancelled", "message": "cancelled before it started"})
                continue
            self.handle(request)

    def handle(self, request: dict) -> None:
        request_id = request.get("id")
        progress = _RequestProgress(self.stdout, request_id, self.lock)
        self.current = (request_id, progress)
        if str(request_id) in self.cancelled or self.shutdown.is_set():  # arrived while we were setting up
            progress.cancel()
        try:
            args = self.parse(request)
            from ..infer.runner import segment_one

            summary = segment_one(args.image, args.output, args.predictor_options, fmt=args.format or "nifti",
                                  progress=progress, entropy_fmt=args.entropy_format, series_uid=args.series,
                                  predictor_for=self.predictor)
            self.answer({"id": request_id, "status": "ok", "summary": str(summary)})
        except CancelledError as exc:
            self.answer({"id": request_id, "status": "cancelled", "message": exc.problem})
        except HepatoblastomaSegError as exc:
            self.answer({"id": request_id, "status": "error", "message": str(exc)})
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the worker
            traceback.print_exc(file=sys.stderr)
            self.answer({"id": request_id, "status": "error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            self.current = None
            self.cancelled.discard(str(request_id))

    def parse(self, request: dict):
        """A request's ``hbseg segment`` arguments, checked by its parser (``predictor_options`` added); a worker
        segments files and folders, so ``--manifest`` and ``--dicomweb`` are refused."""
        from .segment import predictor_options

        unknown = sorted(set(request) - set(REQUEST_KEYS))
        if unknown:
            raise ConfigError(f"unknown request key(s) {', '.join(unknown)}; a request has {', '.join(REQUEST_KEYS)}")
        if request.get("id") is None:
            raise ConfigError("the request has no 'id'")
        for key in ("image", "output"):
            if not isinstance(request.get(key), str) or not request[key]:
                raise ConfigError(f"the request has no '{key}' path")
        options = request.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError("'options' must be a JSON object")
        argv = ["segment", request["image"], "-o", request["output"],
                *option_arguments(options, self.segment_parser)]
        args = self.parser.parse_args(argv)
        if args.manifest is not None or args.dicomweb is not None:
            raise ConfigError("a worker request segments one image; 'manifest' and 'dicomweb' are not request options")
        args.predictor_options = predictor_options(args)
        return args

    def predictor(self, options, modality: str):
        """A loaded predictor for these options and modality: kept from an earlier request when there is one."""
        from ..infer.predictor import Predictor

        key = (tuple(sorted(vars(options).items())), modality)
        if key in self.predictors:
            self.predictors.move_to_end(key)
            return self.predictors[key]
        while len(self.predictors) >= MAX_LOADED_MODELS:
            self.predictors.popitem(last=False)
        predictor = Predictor.from_options(options, modality=modality)
        self.predictors[key] = predictor
        return predictor


def _pid() -> int:
    import os

    return os.getpid()
