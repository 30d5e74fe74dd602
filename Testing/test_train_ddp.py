"""Multi-process training through ``torchrun`` (DistributedDataParallel, gloo on 2 CPU processes): both ranks end
with identical weights, and those are the weights of the saved checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from HepatoblastomaSegLib.bundle import load_bundle

from helpers_synthetic import write_dataset


def _sha256_of_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """The documented recipe (sorted names, dtype, raw bytes), written out here independently."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_two_process_ddp_ranks_end_with_identical_weights(tmp_path):
    dataset = write_dataset(tmp_path / "ds", "ct", n_cases=4)
    out = tmp_path / "model"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "HepatoblastomaSegLib.cli", "train", str(dataset), "--modality", "ct", "-o", str(out),
           "--epochs", "2", "--iters-per-epoch", "2", "--width", "0.125", "--patch-size", "8,32,32",
           "--workers", "0", "--val-fraction", "0.25", "--device", "cpu", "--progress", "none"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check = json.loads((out / "training" / "ddp_check.json").read_text())
    hashes = check["final_state_sha256_per_rank"]
    assert check["world_size"] == 2 and len(hashes) == 2 and hashes[0] == hashes[1]
    folder = out / "training" / "checkpoint-e00002"
    assert _sha256_of_tensors(load_file(str(folder / "model.safetensors"))) == hashes[0]
    state = torch.load(folder / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 2
    # Validation was shared out over the ranks and summed: one Dice per epoch, a real number.
    assert all(0.0 <= row["val_dice"] <= 1.0 for row in state["history"])
    load_bundle(out, modality="ct")
