"""A command in a background process, watched without blocking: the GUI's "Segment tumor" runs ``hbseg segment
--progress json`` through this, so 3D Slicer stays responsive while the network runs.

State machine (:class:`RunState`)::

    idle --start()--> running --(exit 0 [+ a "done" line])--> done
                              --(exit != 0, or an "error" line)--> failed
                              --cancel()--> cancelled   (the whole process tree is killed)

Nothing here blocks: two reader threads move the child's stdout and stderr lines into a queue, and :meth:`poll`
(called by a GUI timer, every 100-200 ms) drains it, parses the progress lines (the library's
:func:`~HepatoblastomaSegLib.progress.parse_json_line` format) and notices when the process has ended. Every line
also goes to a log file, so the process log is one click away when something fails.

Why a process *tree*: 3D Slicer's ``PythonSlicer`` is a launcher that starts the real Python interpreter as its
child, so killing only the launcher would leave the network running. The child is started in its own process group
(POSIX: a new session; Windows: a new process group) and the whole group is killed on cancel.

Pure Python (no Qt, no MRML): importable and testable anywhere.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from HepatoblastomaSegLib.progress import parse_json_line

#: Rough share of the run time of each ``hbseg segment`` stage (the order they run in), for one overall bar.
STAGE_WEIGHTS = (("read", 0.05), ("preprocess", 0.15), ("inference", 0.55), ("resample", 0.10), ("liver", 0.10),
                 ("write", 0.05))

#: What people read for each stage name the library reports.
STAGE_LABELS = {"read": "Reading the image", "preprocess": "Preprocessing", "inference": "Running the network",
                "resample": "Back to the input grid", "liver": "Finding the liver", "write": "Writing the results",
                "done": "Finished"}

_STREAMS_DONE = object()
#: How long the pipes may stay open after the child exited before the run is concluded anyway (s).
_PIPE_GRACE_S = 2.0


class RunState(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.DONE, RunState.FAILED, RunState.CANCELLED)


def wait_while_running(run: Any, timeout_s: float | None = None, poll_interval_s: float = 0.05) -> RunState:
    """Poll ``run`` (anything with ``poll()`` and ``state``) until it is no longer running or ``timeout_s`` passes;
    returns its state. For scripts and tests: the GUI polls from its timer instead."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while run.state is RunState.RUNNING:
        run.poll()
        if run.state is not RunState.RUNNING or (deadline is not None and time.monotonic() > deadline):
            break
        time.sleep(poll_interval_s)
    return run.state


def format_duration(seconds: float | None) -> str:
    """``12 s``, ``3 min 05 s``, ``1 h 02 min``; ``""`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    if seconds < 1:
        return "<1 s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def overall_fraction(stage: str, fraction: float, previous: float = 0.0) -> float:
    """The whole run's fraction done (0..1) from a stage and its own fraction, by :data:`STAGE_WEIGHTS`.

    An unknown stage keeps ``previous`` (the bar never jumps back); ``done`` is 1.
    """
    if stage == "done":
        return 1.0
    start = 0.0
    for name, weight in STAGE_WEIGHTS:
        if name == stage:
            return max(previous, min(1.0, start + weight * min(max(float(fraction), 0.0), 1.0)))
        start += weight
    return previous


@dataclasses.dataclass(frozen=True)
class ProgressUpdate:
    """One progress line as the GUI shows it.

    ``fraction``: of the current stage (0..1); ``eta_s``: the library's estimate of the time left in that stage
    (seconds, None when unknown); ``overall``: of the whole run (0..1, :func:`overall_fraction`).
    """

    stage: str
    fraction: float
    eta_s: float | None
    message: str
    overall: float

    @classmethod
    def from_record(cls, record: Mapping[str, Any], previous_overall: float = 0.0) -> ProgressUpdate:
        stage = str(record.get("stage") or "")
        fraction = float(record.get("fraction") or 0.0)
        eta = record.get("eta_s")
        return cls(stage, fraction, None if eta is None else float(eta), str(record.get("message") or ""),
                   overall_fraction(stage, fraction, previous_overall))

    @property
    def percent(self) -> int:
        """Overall percent done, for the progress bar."""
        return int(round(100 * self.overall))

    def text(self) -> str:
        """``Running the network: 42 %, about 3 s left (window batch 2/4)``."""
        label = STAGE_LABELS.get(self.stage, self.stage.capitalize() or "Working")
        parts = [f"{label}: {int(round(100 * self.fraction))} %"]
        left = format_duration(self.eta_s) if self.eta_s and self.fraction < 1 else ""
        if left:
            parts.append(f"about {left} left")
        text = ", ".join(parts)
        if self.message and self.stage not in ("read", "write", "done"):  # those messages are long paths
            text += f" ({self.message})"
        return text


class ProcessRunner:
    """Run ``argv`` in the background and follow it (see the module docstring).

    ``env``: the child's whole environment (None: this process's); ``log_path``: where every line goes (with the
    stream name and the seconds since start); ``require_done_event``: a zero exit status counts as success only
    after a ``{"event": "done"}`` line (as ``hbseg ... --progress json`` prints), so a child that died silently
    is not taken for a finished run.
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 log_path: str | Path | None = None, require_done_event: bool = True, max_log_lines: int = 5000):
        if not argv:
            raise ValueError("argv is empty")
        self.argv = [str(a) for a in argv]
        self.env = None if env is None else {str(k): str(v) for k, v in env.items()}
        self.cwd = None if cwd is None else str(cwd)
        self.log_path = None if log_path is None else Path(log_path)
        self.require_done_event = require_done_event
        self.state = RunState.IDLE
        self.returncode: int | None = None
        self.progress: ProgressUpdate | None = None
        self.events: list[dict] = []
        self.stdout_lines: list[str] = []   # stdout lines that are not progress records
        self.log_lines: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self.error_message = ""
        self.done_message = ""
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._open_streams = 0
        self._log_handle = None
        self._started = 0.0
        self._ended: float | None = None
        self._exit_seen: float | None = None

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> ProcessRunner:
        """Start the child (idle -> running). ``OSError`` (e.g. executable not found) leaves the runner failed."""
        if self.state is not RunState.IDLE:
            raise RuntimeError(f"this runner is {self.state.value}; make a new one for another run")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "w", encoding="utf-8", errors="replace")
            self._log_handle.write("$ " + " ".join(_quote(a) for a in self.argv) + "\n")
            self._log_handle.flush()
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True  # its own process group: killpg reaches launcher and interpreter
        self._started = time.monotonic()
        try:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as exc:
            self._log("runner", f"could not start: {exc}")
            self.error_message = f"could not start {self.argv[0]}: {exc.strerror or exc}"
            self._end(RunState.FAILED)
            raise
        self.state = RunState.RUNNING
        for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            thread = threading.Thread(target=self._read, args=(name, stream), daemon=True,
                                      name=f"hbseg-{name}-{self._process.pid}")
            self._open_streams += 1
            thread.start()
            self._threads.append(thread)
        return self

    def poll(self) -> list[dict]:
        """Take in what the child printed since the last call and notice whether it ended; return the new progress
        records (as parsed dicts). Cheap; never blocks."""
        new = self._drain()
        if self.state is not RunState.RUNNING or self._process is None or self._process.poll() is None:
            return new
        if self._exit_seen is None:
            self._exit_seen = time.monotonic()
        # Wait for both pipes to close (the last lines), but not forever: a grandchild that inherited them
        # could keep them open after the child itself has exited.
        if self._open_streams == 0 or time.monotonic() - self._exit_seen > _PIPE_GRACE_S:
            new += self._drain()
            self._conclude(self._process.returncode)
        return new

    def cancel(self, timeout_s: float = 10.0) -> bool:
        """Kill the child's whole process tree (running -> cancelled); True when something was running."""
        if self.state is not RunState.RUNNING or self._process is None:
            return False
        self.state = RunState.CANCELLED  # first, so a poll from another thread cannot report "failed"
        kill_process_tree(self._process)
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.returncode = self._process.returncode
        self._join_readers(timeout_s)
        self._drain()
        self._log("runner", "cancelled by the user; process tree killed")
        self._end(RunState.CANCELLED)
        return True

    def wait(self, timeout_s: float | None = None, poll_interval_s: float = 0.05) -> RunState:
        """Block until the run ends or ``timeout_s`` passes (for scripts and tests; the GUI polls instead)."""
        return wait_while_running(self, timeout_s, poll_interval_s)

    # ------------------------------------------------------------------------------------------------ views
    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def elapsed_s(self) -> float:
        if not self._started:
            return 0.0
        return (self._ended if self._ended is not None else time.monotonic()) - self._started

    def log_text(self, last: int | None = None) -> str:
        lines = list(self.log_lines)
        return "\n".join(lines[-last:] if last else lines)

    def stderr_tail(self, n: int = 20) -> list[str]:
        return [line[len("[stderr] "):] for line in self.log_lines if line.startswith("[stderr] ")][-n:]

    # ------------------------------------------------------------------------------------------------ internals
    def _read(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # stream closed under us when the tree was killed
            pass
        finally:
            self._queue.put((name, _STREAMS_DONE))

    def _drain(self) -> list[dict]:
        records = []
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                return records
            if line is _STREAMS_DONE:
                self._open_streams -= 1
                continue
            self._log(name, line)
            if name != "stdout":
                continue
            record = parse_json_line(line)
            if record is None:
                self.stdout_lines.append(line)
                continue
            records.append(record)
            self.events.append(record)
            event = record.get("event")
            if event == "progress":
                self.progress = ProgressUpdate.from_record(record, self.progress.overall if self.progress else 0.0)
            elif event == "done":
                self.done_message = str(record.get("message") or "")
                self.progress = ProgressUpdate.from_record(record, 1.0)
            elif event == "error":
                self.error_message = str(record.get("message") or "")

    def _conclude(self, returncode: int) -> None:
        self.returncode = returncode
        done_seen = any(r.get("event") == "done" for r in self.events)
        if returncode == 0 and (done_seen or not self.require_done_event) and not self.error_message:
            self._end(RunState.DONE)
            return
        if not self.error_message:
            tail = [line for line in self.stderr_tail(50) if line.strip()]
            errors = [line for line in tail if "error" in line.lower()]
            if errors:
                self.error_message = errors[-1]
            elif returncode == 0:
                self.error_message = "the process ended without reporting that it finished"
            elif returncode < 0:
                self.error_message = f"the process was killed by signal {-returncode} (out of memory?)"
            else:
                self.error_message = tail[-1] if tail else f"the process exited with status {returncode}"
        self._end(RunState.FAILED)

    def _end(self, state: RunState) -> None:
        self.state = state
        self._ended = time.monotonic()
        self._log("runner", f"{state.value} (exit status {self.returncode}, {self.elapsed_s:.1f} s)")
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _join_readers(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    def _log(self, name: str, line: str) -> None:
        self.log_lines.append(f"[{name}] {line}")
        if self._log_handle is not None:
            self._log_handle.write(f"{time.monotonic() - self._started:8.2f} [{name}] {line}\n")
            self._log_handle.flush()


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and everything it started.

    POSIX: the child leads its own session (see :class:`ProcessRunner`), so one ``killpg`` reaches it and all its
    descendants, even once the launcher itself has exited. Descendants that left the group (psutil, when installed,
    finds them) are killed one by one. Windows: ``taskkill /T`` walks the tree.
    """
    descendants = []
    try:
        import psutil  # optional: Slicer ships it on some platforms

        descendants = psutil.Process(process.pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - not installed, or the process is already gone
        pass
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for child in descendants:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    try:
        process.kill()
    except OSError:
        pass


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./:=+,@" for c in arg) else repr(arg)


def python_command(python_executable: str | Path, library_dir: str | Path, cli_args: Sequence[str]) -> list[str]:
    """``python -c <bootstrap> LIBRARY_DIR hbseg-args...``: runs the ``hbseg`` command of the library in
    ``library_dir`` (the folder that holds ``HepatoblastomaSegLib/``) with any Python, e.g. 3D Slicer's
    ``PythonSlicer``, which does not have the extension's module folder on its ``sys.path``. The folder travels as
    an argument, so no path is ever quoted into code."""
    bootstrap = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                 "from HepatoblastomaSegLib.cli import main; sys.exit(main())")
    return [str(python_executable), "-c", bootstrap, str(library_dir), *[str(a) for a in cli_args]]


def child_environment(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a background run: ``base`` (default: this process's) with unbuffered UTF-8 output and
    ``extra`` variables (e.g. ``HBSEG_MODELS_DIR``)."""
    env = dict(os.environ if base is None else base)
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


def this_python() -> str:
    """The interpreter running this code (tests and batch use it in place of ``PythonSlicer``)."""
    return sys.executable
