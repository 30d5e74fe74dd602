"""One progress protocol for every long job, rendered as a bar, as JSON lines, or not at all.

A job calls ``progress(stage, fraction)`` with ``fraction`` in [0, 1] for that stage; the reporter estimates the time
left. The CLI renders it with tqdm (people) or as one JSON object per line (``--progress json``, read by the Slicer
module's background-process runner). A reporter may also be asked to cancel: jobs call :meth:`Progress.check_cancel`
between steps and stop with :class:`~HepatoblastomaSeg.errors.CancelledError`.

JSON line format (one object per line on stdout, nothing else on that line)::

    {"event": "progress", "stage": "inference", "fraction": 0.42, "eta_s": 3.1, "message": "window 21/50"}
    {"event": "done", "stage": "done", "fraction": 1.0, "eta_s": 0.0, "message": "OUT/summary.json"}
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Protocol

from .errors import CancelledError

JSON_EVENTS = ("progress", "log", "done", "error")


class ProgressCallback(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "") -> None: ...


class Progress:
    """Base reporter: tracks time per stage for the ETA, and a cancel flag. Subclasses render."""

    def __init__(self):
        self._stage: str | None = None
        self._stage_start = time.monotonic()
        self._cancel = threading.Event()

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_start = stage, now
        fraction = min(max(float(fraction), 0.0), 1.0)
        elapsed = now - self._stage_start
        eta_s = elapsed * (1.0 - fraction) / fraction if fraction > 0 else None
        self.render(stage, fraction, eta_s, message)
        self.check_cancel()

    def render(self, stage: str, fraction: float, eta_s: float | None, message: str) -> None:
        """Show one update; the base class shows nothing."""

    def log(self, message: str) -> None:
        """A free-text line that is not a progress step (e.g. which DICOM series was chosen)."""

    def close(self) -> None:
        """End the display (finish a bar)."""

    def cancel(self) -> None:
        self._cancel.set()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise CancelledError("cancelled by the user")


class NullProgress(Progress):
    """Reports nothing (library default)."""


class JsonLinesProgress(Progress):
    """Machine-readable progress: one JSON object per line, flushed at once (see module docstring)."""

    def __init__(self, stream: IO[str] | None = None):
        super().__init__()
        self.stream = stream if stream is not None else sys.stdout

    def emit(self, event: str, stage: str, fraction: float, eta_s: float | None, message: str = "") -> None:
        record = {"event": event, "stage": stage, "fraction": round(fraction, 4),
                  "eta_s": None if eta_s is None else round(eta_s, 2), "message": message}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def render(self, stage: str, fraction: float, eta_s: float | None, message: str) -> None:
        self.emit("progress", stage, fraction, eta_s, message)

    def log(self, message: str) -> None:
        self.emit("log", self._stage or "", 0.0, None, message)

    def done(self, message: str = "") -> None:
        self.emit("done", "done", 1.0, 0.0, message)

    def error(self, message: str) -> None:
        self.emit("error", self._stage or "", 0.0, None, message)


def parse_json_line(line: str) -> dict | None:
    """Parse one line of :class:`JsonLinesProgress` output; None for lines that are not progress records."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("event") not in JSON_EVENTS:
        return None
    return record


class TqdmProgress(Progress):
    """A progress bar per stage on stderr, for people at a terminal."""

    def __init__(self, stream: IO[str] | None = None, disable: bool | None = None):
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.disable = disable
        self._bar = None
        self._bar_stage: str | None = None

    def render(self, stage: str, fraction: float, eta_s: float | None, message: str) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar_stage != stage:
            self.close()
            self._bar_stage = stage
            self._bar = tqdm(total=1000, desc=stage, file=self.stream, disable=self.disable, leave=False,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
        self._bar.n = int(round(fraction * 1000))
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def log(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_stage = None
