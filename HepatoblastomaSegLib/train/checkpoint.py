"""Checkpoints without pickled objects: weights in safetensors, everything else loadable with ``weights_only=True``.

One checkpoint is a folder ``training/checkpoint-eNNNNN/`` (NNNNN = epochs completed) holding

- ``model.safetensors``: every tensor of the network, deep-supervision heads included (DynUNet's ``skip_layers.*``
  aliases left out: they are the same tensors under a second name);
- ``state.pt``: ``torch.save`` of plain containers only (dicts, lists, numbers, strings, tensors): optimiser and
  schedule state, AMP loss-scaler state, RNG states, the epoch, the history of the log, the best validation result.

It is written into a hidden staging folder and renamed into place, then ``training/latest_checkpoint.txt`` is
replaced (atomically) to name it, then older checkpoint folders are deleted; a crash at any point leaves the previous
checkpoint usable. :func:`load_latest` follows the pointer (or, without one, takes the newest complete folder).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from ..io import write_text_atomic

LATEST = "latest_checkpoint.txt"
MODEL_FILE, STATE_FILE = "model.safetensors", "state.pt"
_FOLDER = re.compile(r"^checkpoint-e(\d{5,})$")
_ALIASES = ("skip_layers.",)
_WRAPPERS = ("module.", "_orig_mod.")


def training_tensors(net: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All network tensors needed to resume (wrapper prefixes stripped, aliases dropped), contiguous CPU copies."""
    state = net.state_dict() if isinstance(net, torch.nn.Module) else net
    out = {}
    for key, value in state.items():
        while key.startswith(_WRAPPERS):
            key = key.split(".", 1)[1]
        if key.startswith(_ALIASES):
            continue
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def load_training_tensors(net: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: Path) -> None:
    """Load what :func:`training_tensors` saved into ``net`` (unwrapped); refuse anything missing or extra."""
    result = net.load_state_dict(dict(tensors), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_ALIASES)]
    if missing or result.unexpected_keys:
        raise ModelError(f"checkpoint does not fit the network (missing {missing[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}); was it written with another width or plans?", source)


def state_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA256 over the sorted keys and the raw bytes of each tensor (float32 as stored): equal weights, equal hash."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict:
    """Global RNG states (torch CPU and CUDA, numpy legacy, Python) as tensors and plain lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


# ------------------------------------------------------------------------------------------------ save / load
def checkpoint_folder(training_dir: Path, epoch: int) -> Path:
    return Path(training_dir) / f"checkpoint-e{int(epoch):05d}"


def save_checkpoint(training_dir: str | Path, epoch: int, tensors: Mapping[str, torch.Tensor], state: dict) -> Path:
    """Write checkpoint ``epoch`` atomically (see module docstring) and return its folder."""
    from safetensors.torch import save_file

    training_dir = Path(training_dir)
    training_dir.mkdir(parents=True, exist_ok=True)
    folder = checkpoint_folder(training_dir, epoch)
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", suffix=".partial", dir=training_dir))
    try:
        save_file(dict(tensors), str(staging / MODEL_FILE), metadata={"epoch": str(int(epoch))})
        with open(staging / STATE_FILE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if folder.exists():  # the same epoch written before a crash, never named by the pointer: replace it
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(training_dir / LATEST, folder.name + "\n")
    for old in training_dir.iterdir():
        if old != folder and _FOLDER.match(old.name) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _complete(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / STATE_FILE).is_file()


def latest_checkpoint(training_dir: str | Path) -> Path | None:
    """The folder of the newest usable checkpoint, or None."""
    training_dir = Path(training_dir)
    pointer = training_dir / LATEST
    if pointer.is_file():
        folder = training_dir / pointer.read_text(encoding="utf-8").strip()
        if _FOLDER.match(folder.name) and _complete(folder):
            return folder
    if not training_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in training_dir.iterdir()
                   if (m := _FOLDER.match(p.name)) and p.is_dir() and _complete(p))
    return found[-1][1] if found else None


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, state) of one checkpoint folder; :class:`ModelError` naming the file when unreadable."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        tensors = load_file(str(folder / MODEL_FILE))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"unreadable checkpoint weights ({exc})", folder / MODEL_FILE) from exc
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, disallowed globals
        raise ModelError(f"unreadable checkpoint state ({exc})", folder / STATE_FILE) from exc
    if not isinstance(state, dict) or "epoch" not in state:
        raise ModelError("checkpoint state has no epoch", folder / STATE_FILE)
    return tensors, state


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> Path:
    """One safetensors file, atomically (e.g. the best model so far)."""
    from safetensors.torch import save

    from ..io import write_bytes_atomic

    return write_bytes_atomic(path, save(dict(tensors), metadata=metadata))
