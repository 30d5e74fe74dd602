"""One "Segment tumor" click, without Qt: the input volume node to a file, ``hbseg segment --progress json`` in a
background process, and its outputs into the scene as the result nodes of :func:`~.segment.load_results`.

The scene is touched only by :meth:`SegmentJob.load_results`, after the process reported success: a cancelled or
failed run leaves the scene exactly as it was. The GUI drives a job with a timer::

    job = SegmentJob(volume_node, SegmentRequest(model_path=..., modality="ct"), python_executable=PythonSlicer)
    job.start()
    ...                       # every 150 ms: update = job.poll(); show update.percent / update.text()
    job.cancel()              # or, once job.state is RunState.DONE:
    result = job.load_results(scene)
    job.cleanup()

Files of a run live in ``work_dir`` (a new temporary folder by default): ``input.nrrd``, ``output/`` and
``hbseg.log`` (every line the process printed); :meth:`SegmentJob.cleanup` removes all but the log.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from HepatoblastomaSegLib.errors import InputError

from HepatoblastomaSegRunner.process import ProcessRunner, ProgressUpdate, RunState, child_environment, python_command, this_python

INPUT_NAME = "input.nrrd"
OUTPUT_FOLDER = "output"
LOG_NAME = "hbseg.log"


def library_dir() -> Path:
    """The folder that holds the ``HepatoblastomaSegLib`` package in use (the repository root in a checkout,
    the module folder in an installed extension)."""
    import HepatoblastomaSegLib

    return Path(HepatoblastomaSegLib.__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class SegmentRequest:
    """What the user chose. ``model_path``: a bundle folder (None: the library's bundled default of
    ``modality``); ``modality``: "ct" or "mri" (None: the model's); ``device``: "auto", "cpu" or "cuda";
    ``liver_anchor``: False turns the CT liver anchor off, True asks for it, None leaves it to ``hbseg segment``;
    ``more``: any other ``hbseg segment`` options by long name, e.g. ``(("overlap", 0.6),)``."""

    model_path: str | Path | None = None
    modality: str | None = None
    device: str = "auto"
    tta: bool = True
    liver_anchor: bool | None = None
    more: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.modality not in (None, "ct", "mri"):
            raise ValueError(f"modality must be 'ct', 'mri' or None, not {self.modality!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {self.device!r}")

    def options(self) -> dict[str, Any]:
        """The ``hbseg segment`` options by long name (an ``hbseg serve`` request's ``options``): NRRD outputs, what
        Slicer reads best, and the user's choices."""
        options: dict[str, Any] = {"format": "nrrd", "device": self.device, "tta": self.tta}
        if self.model_path is not None:
            options["model"] = str(self.model_path)
        if self.modality is not None:
            options["modality"] = self.modality
        if self.liver_anchor is not None:
            options["liver_anchor"] = self.liver_anchor
        return {**options, **dict(self.more)}

    def cli_args(self, input_path: str | Path, output_dir: str | Path) -> list[str]:
        """The same request as ``hbseg segment`` arguments, with JSON progress lines on stdout (turned into
        arguments by the ``hbseg segment`` parser's own options, so they are spelled once, there)."""
        from HepatoblastomaSegLib.cli.serve import option_arguments, segment_parser

        return ["segment", str(input_path), "-o", str(output_dir), "--progress", "json",
                *option_arguments(self.options(), segment_parser()[1])]


class SegmentJob:
    """One background segmentation of ``volume_node`` (see the module docstring).

    ``python_executable``: 3D Slicer's ``PythonSlicer`` in the application, ``sys.executable`` elsewhere;
    ``env``: the child's environment (in the application: Slicer's *startup* environment, so the launcher sets
    up its own); ``name`` / ``case``: passed to :func:`~.segment.load_results`. ``worker``: a warm
    :class:`~.worker.WorkerProcess` to send the request to (models stay loaded); without one a new
    ``hbseg segment`` process runs.
    """

    def __init__(self, volume_node, request: SegmentRequest, *, python_executable: str | Path | None = None,
                 work_dir: str | Path | None = None, env: Mapping[str, str] | None = None,
                 lib_dir: str | Path | None = None, name: str | None = None, case: str | None = None,
                 worker=None):
        self.worker = worker
        self.volume_node = volume_node
        self.request = request
        self.python_executable = str(python_executable or this_python())
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="hbseg-"))
        self.env = child_environment(env)
        self.lib_dir = Path(lib_dir) if lib_dir is not None else library_dir()
        self.name = name
        self.case = case
        self.runner: ProcessRunner | None = None

    # ------------------------------------------------------------------------------------------------ paths
    @property
    def input_path(self) -> Path:
        return self.work_dir / INPUT_NAME

    @property
    def output_dir(self) -> Path:
        return self.work_dir / OUTPUT_FOLDER

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_NAME

    def argv(self) -> list[str]:
        return python_command(self.python_executable, self.lib_dir,
                              self.request.cli_args(self.input_path, self.output_dir))

    # ------------------------------------------------------------------------------------------------ run
    def start(self) -> None:
        """Write the volume's voxels and exact geometry to ``input.nrrd`` and start the process (or send the
        request to the warm worker)."""
        from HepatoblastomaSegLib.io import write_volume

        from .volumes import volume_from_node

        if self.runner is not None:
            raise RuntimeError("this job was started already; make a new one for another run")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_volume(volume_from_node(self.volume_node), self.input_path)
        if self.worker is not None:
            self.runner = self.worker.submit(self.input_path, self.output_dir, self.request.options(),
                                             log_path=self.log_path)
            return
        self.runner = ProcessRunner(self.argv(), env=self.env, log_path=self.log_path, cwd=self.work_dir)
        self.runner.start()

    @property
    def state(self) -> RunState:
        return RunState.IDLE if self.runner is None else self.runner.state

    def poll(self) -> ProgressUpdate | None:
        """Take in the process's output; return the latest progress (None before the first line)."""
        if self.runner is None:
            return None
        self.runner.poll()
        return self.runner.progress

    def wait(self, timeout_s: float | None = None) -> RunState:
        if self.runner is None:
            raise RuntimeError("the job was not started")
        return self.runner.wait(timeout_s)

    def cancel(self) -> bool:
        """Kill the process tree; the scene is left unchanged."""
        return self.runner.cancel() if self.runner is not None else False

    def load_results(self, scene=None) -> Any:
        """The finished run's outputs as result nodes in ``scene`` (default: the input volume's scene)."""
        from .segment import load_results

        if self.state is not RunState.DONE:
            raise RuntimeError(f"the segmentation is {self.state.value}, not done; nothing to load")
        scene = scene if scene is not None else self.volume_node.GetScene()
        if scene is None:
            raise InputError("the input volume is no longer in a scene (was it deleted during the run?)")
        return load_results(scene, self.volume_node, self.output_dir, name=self.name, case=self.case)

    # ------------------------------------------------------------------------------------------------ reports
    @property
    def error_message(self) -> str:
        return "" if self.runner is None else self.runner.error_message

    def log_text(self, last: int | None = None) -> str:
        if self.runner is not None and self.runner.log_lines:
            return self.runner.log_text(last)
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""

    def warnings(self) -> list[str]:
        """The library's warnings for the finished run (e.g. a GPU out-of-memory fallback), from its summary."""
        import json

        summary = self.output_dir / "summary.json"
        try:
            return [str(w) for w in json.loads(summary.read_text(encoding="utf-8")).get("warnings", [])]
        except (OSError, ValueError, AttributeError):
            return []

    def cleanup(self, keep_log: bool = True) -> None:
        """Remove the input and output files (and the log unless ``keep_log``, then the work folder too when it is
        left empty); the process must be over."""
        if self.state is RunState.RUNNING:
            raise RuntimeError("cancel the run before cleaning up its files")
        for path in (self.input_path,):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.output_dir, ignore_errors=True)
        if not keep_log:
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
                return
            self.log_path.unlink(missing_ok=True)
            try:
                self.work_dir.rmdir()  # only when nothing else was put there
            except OSError:
                pass


def scene_node_ids(scene) -> list[str]:
    """The IDs of every node in ``scene`` (to check that a cancelled run left it unchanged)."""
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def run_to_completion(job: SegmentJob, timeout_s: float | None = None) -> RunState:
    """Start ``job`` and wait for it (batch use and tests)."""
    job.start()
    return job.wait(timeout_s)


__all__: Sequence[str] = ["INPUT_NAME", "LOG_NAME", "OUTPUT_FOLDER", "SegmentJob", "SegmentRequest", "library_dir",
                          "run_to_completion", "scene_node_ids"]
