"""A warm ``hbseg serve --stdio`` worker for the module: torch, CUDA and the model are loaded once, not per click.

:class:`WorkerProcess` is one worker process: :meth:`~WorkerProcess.submit` writes a request line and returns a
:class:`WorkerRun`, which a :class:`~.background.SegmentJob` drives exactly like a
:class:`~.process.ProcessRunner` (``poll``, ``state``, ``progress``, ``cancel``, the log). :class:`WarmWorker` keeps
one worker alive between clicks and cases and starts a fresh one when the last one died (a crash, an out-of-memory
kill) or was killed because it did not answer a cancel within :data:`CANCEL_GRACE_S`.

Nothing blocks: a reader thread per stream moves lines into a queue, and ``poll`` (the GUI timer's) hands each
progress line and final answer to the run it names (the ``"id"`` of the request). Pure Python, no Qt, no MRML.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from HepatoblastomaSegLib.progress import parse_json_line

from .process import ProgressUpdate, RunState, kill_process_tree, wait_while_running

#: Seconds a cancelled request may take to stop at its next window batch before the worker is killed (and a fresh
#: one started for the next click).
CANCEL_GRACE_S = 5.0
_CLOSED = object()


class WorkerRun:
    """One request to a worker, with the interface of :class:`~.process.ProcessRunner` that jobs and the GUI use."""

    def __init__(self, worker: WorkerProcess, request_id: str, log_path: str | Path | None = None,
                 max_log_lines: int = 5000):
        self.worker = worker
        self.request_id = request_id
        self.state = RunState.RUNNING
        self.progress: ProgressUpdate | None = None
        self.events: list[dict] = []
        self.log_lines: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self.error_message = ""
        self.done_message = ""
        self.returncode: int | None = None
        self.log_path = None if log_path is None else Path(log_path)
        self._log_handle = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "w", encoding="utf-8", errors="replace")
        self._started = time.monotonic()
        self._ended: float | None = None
        self._cancel_sent: float | None = None

    # --- the ProcessRunner interface
    @property
    def pid(self) -> int | None:
        return self.worker.pid

    @property
    def elapsed_s(self) -> float:
        return (self._ended if self._ended is not None else time.monotonic()) - self._started

    def poll(self) -> list[dict]:
        before = len(self.events)
        self.worker.poll()
        if self.state is RunState.RUNNING and self._cancel_sent is not None \
                and time.monotonic() - self._cancel_sent > CANCEL_GRACE_S:
            self.worker.kill()  # it did not stop in time: the next click gets a fresh worker
            self._end(RunState.CANCELLED)
        return self.events[before:]

    def cancel(self, timeout_s: float = CANCEL_GRACE_S) -> bool:
        """Ask the worker to stop this request and wait up to ``timeout_s`` for it to say so; kill the worker
        otherwise. The run is cancelled either way; True when it was running."""
        if self.state is not RunState.RUNNING:
            return False
        self._cancel_sent = time.monotonic()
        self.worker.send({"cancel": self.request_id})
        deadline = time.monotonic() + timeout_s
        while self.state is RunState.RUNNING and time.monotonic() < deadline:
            self.worker.poll()
            time.sleep(0.02)
        if self.state is RunState.RUNNING:
            self.worker.kill()
        if self.state is not RunState.CANCELLED:
            self._end(RunState.CANCELLED)
        return True

    def wait(self, timeout_s: float | None = None, poll_interval_s: float = 0.05) -> RunState:
        return wait_while_running(self, timeout_s, poll_interval_s)

    def log_text(self, last: int | None = None) -> str:
        lines = list(self.log_lines)
        return "\n".join(lines[-last:] if last else lines)

    def stderr_tail(self, n: int = 20) -> list[str]:
        return [line[len("[stderr] "):] for line in self.log_lines if line.startswith("[stderr] ")][-n:]

    # --- fed by the worker
    def _take(self, stream: str, line: str, record: dict | None) -> None:
        self._log(stream, line)
        if record is None:
            return
        if "status" in record:  # the final answer
            status = record["status"]
            if status == "ok":
                self.done_message = str(record.get("summary") or "")
                self.progress = ProgressUpdate.from_record({"stage": "done", "fraction": 1.0}, 1.0)
                self._end(RunState.DONE)
            elif status == "cancelled":
                self._end(RunState.CANCELLED)
            else:
                self.error_message = str(record.get("message") or "the worker reported an error")
                self._end(RunState.FAILED)
            return
        self.events.append(record)
        if record.get("event") == "progress":
            self.progress = ProgressUpdate.from_record(record, self.progress.overall if self.progress else 0.0)

    def _worker_ended(self, returncode: int | None) -> None:
        if self.state is not RunState.RUNNING:
            return
        self.returncode = returncode
        if self._cancel_sent is not None:
            self._end(RunState.CANCELLED)
            return
        tail = [line for line in self.worker.stderr_tail(50) if line.strip()]
        errors = [line for line in tail if "error" in line.lower()]
        cause = (f"killed by signal {-returncode} (out of memory?)" if returncode is not None and returncode < 0
                 else f"exit status {returncode}")
        self.error_message = errors[-1] if errors else f"the segmentation worker ended ({cause})"
        self._end(RunState.FAILED)

    def _end(self, state: RunState) -> None:
        if self.state is not RunState.RUNNING:
            return
        self.state = state
        self._ended = time.monotonic()
        self._log("runner", f"{state.value} ({self.elapsed_s:.1f} s, worker pid {self.worker.pid})")
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self.worker._finished(self)

    def _log(self, name: str, line: str) -> None:
        self.log_lines.append(f"[{name}] {line}")
        if self._log_handle is not None:
            self._log_handle.write(f"{time.monotonic() - self._started:8.2f} [{name}] {line}\n")
            self._log_handle.flush()


class WorkerProcess:
    """One ``hbseg serve --stdio`` process (see the module docstring). ``argv`` runs it, e.g.
    :func:`~.process.python_command` ``(PythonSlicer, library_dir, ["serve", "--stdio"])``."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None):
        self.argv = [str(a) for a in argv]
        self.env = None if env is None else {str(k): str(v) for k, v in env.items()}
        self.cwd = None if cwd is None else str(cwd)
        self.ready: dict | None = None
        self.runs: dict[str, WorkerRun] = {}
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=500)
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._open_streams = 0
        self._write_lock = threading.Lock()

    def start(self) -> WorkerProcess:
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True  # its own process group: the launcher and the interpreter die together
        self._process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, text=True,
                                         encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            self._open_streams += 1
            threading.Thread(target=self._read, args=(name, stream), daemon=True,
                             name=f"hbseg-worker-{name}-{self._process.pid}").start()
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        return any(run.state is RunState.RUNNING for run in self.runs.values())

    def submit(self, image: str | Path, output: str | Path, options: Mapping[str, Any], *,
               log_path: str | Path | None = None) -> WorkerRun:
        """Send one request (``options``: ``hbseg segment``'s, by long name); returns its run."""
        if not self.alive:
            raise RuntimeError("the segmentation worker is not running")
        request_id = uuid.uuid4().hex[:12]
        run = WorkerRun(self, request_id, log_path=log_path)
        self.runs[request_id] = run
        request = {"id": request_id, "image": str(image), "output": str(output), "options": dict(options)}
        run._log("runner", f"request to worker pid {self.pid}: {json.dumps(request)}")
        self.send(request)
        return run

    def send(self, message: Mapping[str, Any]) -> None:
        with self._write_lock:
            try:
                self._process.stdin.write(json.dumps(message) + "\n")
                self._process.stdin.flush()
            except (OSError, ValueError):  # the worker has gone; poll() fails its runs
                pass

    def poll(self) -> None:
        """Hand what the worker printed to the runs it concerns; fail the running ones if the worker has ended."""
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is _CLOSED:
                self._open_streams -= 1
                continue
            if name == "stderr":
                self.stderr_lines.append(line)
                for run in self.runs.values():
                    if run.state is RunState.RUNNING:
                        run._take("stderr", line, None)
                continue
            record = _parse(line)
            if record is not None and record.get("ready"):
                self.ready = record
                continue
            run = self.runs.get(str(record.get("id"))) if record is not None else None
            if run is not None:
                run._take("stdout", line, record)
        if self._process is not None and self._process.poll() is not None:
            for run in list(self.runs.values()):
                run._worker_ended(self._process.returncode)

    def stderr_tail(self, n: int = 20) -> list[str]:
        return list(self.stderr_lines)[-n:]

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            kill_process_tree(self._process)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to stop (running requests are cancelled), close its stdin, kill it if it lingers."""
        if not self.alive:
            return
        self.send({"shutdown": True})
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.poll()

    def _finished(self, run: WorkerRun) -> None:
        self.runs.pop(run.request_id, None)

    def _read(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, _CLOSED))


def _parse(line: str) -> dict | None:
    """A worker stdout line: a progress record (the library's format), a final answer or the ready line."""
    record = parse_json_line(line)
    if record is not None:
        return record
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and ("status" in value or "ready" in value) else None


class WarmWorker:
    """Keeps one worker alive between clicks and cases: :meth:`get` returns it, starting a fresh one when there is
    none or the last one has ended (crashed, or killed after an unanswered cancel). ``argv_factory`` gives the
    command (e.g. with the current ``PythonSlicer``); ``env`` its environment."""

    def __init__(self, argv_factory: Callable[[], Sequence[str]], *, env: Mapping[str, str] | None = None):
        self.argv_factory = argv_factory
        self.env = env
        self.current: WorkerProcess | None = None
        self.started = 0  # how many workers were started (1 + restarts)

    def get(self) -> WorkerProcess:
        if self.current is not None:
            self.current.poll()
            if self.current.alive and self.current.busy:
                raise RuntimeError("a segmentation is still running; cancel it or wait for it to finish")
            if self.current.alive:
                return self.current
        self.current = WorkerProcess(self.argv_factory(), env=self.env).start()
        self.started += 1
        return self.current

    def shutdown(self) -> None:
        if self.current is not None:
            self.current.shutdown()
            self.current = None
