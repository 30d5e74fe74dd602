"""Malicious pickles for the restricted-unpickler tests: each would create a file if it ran."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path


class _SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _SubprocessPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, ([sys.executable, "-c", f"open({str(self.marker)!r}, 'w').close()"],)


PAYLOADS = {"os.system": _SystemPayload, "builtins.eval": _EvalPayload, "subprocess.call": _SubprocessPayload}


def payload_plans(kind: str, marker: Path) -> dict:
    """A dict shaped like nnU-Net v1 plans with a payload hidden in one value."""
    return {"num_stages": 1, "plans_per_stage": [{"patch_size": [32, 32, 32]}], "evil": PAYLOADS[kind](marker)}


def write_payload_pickle(path: Path, kind: str, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(payload_plans(kind, marker), protocol=2))
    return path
