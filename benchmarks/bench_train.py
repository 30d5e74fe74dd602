"""Training speed: iterations/s of the real training loop (sampling, cropping in workers, augmentation on the device,
forward, backward, SGD step) against the pure-compute step rate (the same step on a batch already on the device),
and the peak GPU memory.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_train.py                    # preset chosen by the device: paper on a GPU
    .venv/bin/python benchmarks/bench_train.py --preset tiny      # what a 2-core CPU can do in a minute
    .venv/bin/python benchmarks/bench_train.py --preset paper --workers 8 --json out.json

Presets (cases are synthesised here, deterministic: an elliptic body, a liver and a round tumour, CT in HU):

- ``paper``: 4 CT cases of 100 x 400 x 400 voxels at 0.8 x 0.8 x 2.5 mm, the paper's network (width 1.0, filters
  32..320), patch 48 x 192 x 192, batch 2, deep supervision, bf16 autocast on GPUs that support it;
- ``tiny``: 4 cases of 24 x 96 x 96 voxels, width 0.25, patch 16 x 64 x 64, batch 2, float32 on the CPU.

Full augmentation is on in the loop figure (the defaults of ``hbseg train``). The target on a GPU is a loop rate of at
least 85 % of the pure-compute rate. Numbers depend on the machine; the report states which.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from HepatoblastomaSegLib.io import Geometry, Volume, write_volume
from HepatoblastomaSegLib.network import build_network
from HepatoblastomaSegLib.preprocess import Plans
from HepatoblastomaSegLib.train import TrainConfig, train
from HepatoblastomaSegLib.train.loop import autocast_dtype, select_device
from HepatoblastomaSegLib.train.loss import SegmentationLoss

PRESETS = {
    "paper": {"shape_zyx": (100, 400, 400), "spacing_xyz": (0.8, 0.8, 2.5), "patch": (48, 192, 192), "width": 1.0},
    "tiny": {"shape_zyx": (24, 96, 96), "spacing_xyz": (1.5, 1.5, 3.0), "patch": (16, 64, 64), "width": 0.25},
}


def synthetic_ct_case(shape_zyx, spacing_xyz, seed: int) -> tuple[Volume, Volume]:
    """An int16 CT (air, body, liver, tumour, 15 HU noise) and its tumour mask."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    z, y, x = np.ogrid[:nz, :ny, :nx]
    body = ((y - ny / 2) / (0.42 * ny)) ** 2 + ((x - nx / 2) / (0.46 * nx)) ** 2 < 1
    liver = body & (((y - 0.45 * ny) / (0.22 * ny)) ** 2 + ((x - 0.42 * nx) / (0.24 * nx)) ** 2
                    + ((z - nz / 2) / (0.45 * nz)) ** 2 < 1)
    cy, cx = rng.uniform(0.4, 0.5) * ny, rng.uniform(0.38, 0.46) * nx
    tumour = liver & (((y - cy) / (0.09 * ny)) ** 2 + ((x - cx) / (0.09 * nx)) ** 2
                      + ((z - nz / 2) / (0.25 * nz)) ** 2 < 1)
    image = np.full(shape_zyx, -1000.0, np.float32)
    image[np.broadcast_to(body, shape_zyx)] = 30.0
    image[liver] = 110.0
    image[tumour] = 70.0
    image += rng.normal(0, 15, shape_zyx).astype(np.float32)
    geometry = Geometry(shape_zyx[::-1], spacing_xyz, (0.0, 0.0, 0.0))
    return (Volume(np.clip(image, -1024, 3071).astype(np.int16), geometry),
            Volume(tumour.astype(np.uint8), geometry))


def write_cases(folder: Path, preset: dict, n_cases: int = 4) -> Path:
    rows = []
    for i in range(n_cases):
        image, tumour = synthetic_ct_case(preset["shape_zyx"], preset["spacing_xyz"], seed=i)
        write_volume(image, folder / f"c{i}" / "image.nii.gz")
        write_volume(tumour, folder / f"c{i}" / "tumor.nii.gz")
        rows.append({"case": f"c{i}", "image": f"c{i}/image.nii.gz", "tumor": f"c{i}/tumor.nii.gz"})
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def pure_compute_rate(plans: Plans, width: float, device: torch.device, amp: torch.dtype | None, steps: int,
                      warmup: int) -> float:
    """Iterations/s of forward + loss + backward + clip + SGD step on one batch resident on the device."""
    torch.manual_seed(0)
    net = build_network(plans, width=width, deep_supervision=True).to(device).train()
    loss_fn = SegmentationLoss()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    batch = plans.topology.batch_size
    x = torch.randn(batch, 1, *plans.patch_size_zyx, device=device)
    y = (torch.rand(batch, 1, *plans.patch_size_zyx, device=device) > 0.7).long()

    def step():
        if amp is not None:
            with torch.autocast(device.type, dtype=amp):
                out = net(x)
        else:
            out = net(x)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: paper on a GPU, tiny on the CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iters", type=int, help="iterations per measured epoch (default 60 GPU, 10 CPU)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--work", help="folder for the synthetic cases and the run (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    preset_name = args.preset or ("paper" if device.type == "cuda" else "tiny")
    preset = PRESETS[preset_name]
    iters = args.iters or (60 if device.type == "cuda" else 10)
    amp = autocast_dtype("auto", device)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        t0 = time.perf_counter()
        data = write_cases(work / "data", preset)
        synth_s = time.perf_counter() - t0
        config = TrainConfig(data, "ct", work / "run", epochs=2, iters_per_epoch=iters, width=preset["width"],
                             val_fraction=0.0, patch_size_zyx=preset["patch"], workers=args.workers,
                             device=str(device), schedule="poly")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = train(config)
        run_s = time.perf_counter() - t0
        loop_rate = result.history[-1]["it_per_s"]   # epoch 2: workers and cuDNN warmed up in epoch 1
        peak_loop = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
        plans = Plans.load(work / "run" / "training" / "plans.json")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        compute_rate = pure_compute_rate(plans, preset["width"], device, amp, steps=iters, warmup=min(10, iters))
        peak_compute = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU {platform.machine()}, {torch.get_num_threads()} torch threads")
    results = {
        "preset": preset_name, "device": hardware, "torch": torch.__version__, "amp": str(amp),
        "patch_zyx": list(plans.patch_size_zyx), "batch": plans.topology.batch_size, "width": preset["width"],
        "workers": args.workers, "iters_per_epoch": iters,
        "loop_it_per_s_full_augmentation": round(loop_rate, 3),
        "pure_compute_it_per_s": round(compute_rate, 3),
        "loop_share_of_pure_compute": round(loop_rate / compute_rate, 3),
        "peak_gpu_memory_gib_loop": None if peak_loop is None else round(peak_loop, 2),
        "peak_gpu_memory_gib_pure_compute": None if peak_compute is None else round(peak_compute, 2),
        "synthesis_s": round(synth_s, 1), "train_call_s (plan + cache + 2 epochs)": round(run_s, 1),
    }
    for key, value in results.items():
        print(f"{key:45s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
