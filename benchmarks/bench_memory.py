"""Memory and time of ``hbseg segment`` on a full-size CT of 512x512x200, as a user runs it (a fresh process).

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_memory.py [--model ct-demo | --paper-width] [--device auto] [--json out.json]

The inference issue's memory target: a full-size CT (512x512x200) needs at most 8 GB of GPU memory and at most 8 GB
of RAM on the CPU. The CT is phantom seed 28 (a 182-slice CT at 0.5x0.5x1.25 mm, a 413 mL tumour) resampled along z
to exactly 200 slices (linear, same extent: 1.1375 mm). Each setting (without and with 8-flip TTA) runs
``python -m HepatoblastomaSegLib.cli segment`` in its own process; reported per run: wall seconds of the whole command
(imports, model load, read -> written files), the process's peak resident memory (``wait4``'s ``ru_maxrss``), the
seconds per stage and, on a GPU, the case's peak GPU memory (the summary's ``peak_gpu_memory_gib``: held by tensors,
and by PyTorch's cache; the CUDA context adds about 0.5 GiB on top). ``--paper-width`` uses a randomly initialised
full-width network planned on that CT's own 0.5 mm grid (the heaviest case: no downsampling), as in
``bench_infer.py``; its mask means nothing, its memory does. ``--gpu-memory-gb 8`` adds a TTA run planned for an
8 GB card (fewer patches per network call; the summary's ``patches_per_network_call`` says how many).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from HepatoblastomaSegLib.io import Volume, write_volume
from HepatoblastomaSegLib.phantom import generate_case
from report import write_results  # benchmarks/ (the script's folder) is on sys.path

SEED = 28
SLICES = 200


def ct_with_slices(seed: int, slices: int) -> Volume:
    """Phantom ``seed`` (full size) resampled along z to ``slices`` slices covering the same extent."""
    image = generate_case("ct", seed=seed, size="full").image
    itk = image.to_sitk()
    size = list(itk.GetSize())
    spacing = list(itk.GetSpacing())
    spacing[2] = spacing[2] * size[2] / slices
    size[2] = slices
    # Keep the outer edges of the first and last voxels where they were (the extent), as a scanner reconstructing
    # thinner slices would.
    origin = np.array(itk.GetOrigin()) + np.array(itk.GetDirection()).reshape(3, 3) @ np.array(
        [0.0, 0.0, (spacing[2] - itk.GetSpacing()[2]) / 2])
    out = sitk.Resample(itk, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing, itk.GetDirection(),
                        -1024.0, sitk.sitkInt16)
    return Volume.from_sitk(out)


def run_segment(image: Path, out: Path, model: str, device: str, tta: bool, gpu_memory_gb: float | None = None
                ) -> dict:
    command = [sys.executable, "-m", "HepatoblastomaSegLib.cli", "segment", str(image), "--model", model,
               "--device", device, "--tta" if tta else "--no-tta", "--progress", "none", "-o", str(out)]
    if gpu_memory_gb is not None:
        command += ["--gpu-memory-gb", str(gpu_memory_gb)]
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall_s = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {os.waitstatus_to_exitcode(status)}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {"wall_s": round(wall_s, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB
            "peak_gpu_memory_gib": summary.get("peak_gpu_memory_gib"), "device": summary["device"],
            "patches_per_network_call": summary.get("patches_per_network_call"),
            "stages_s": summary["seconds"], "tumor_volume_ml": round(summary["tumor_volume_ml"], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-demo")
    parser.add_argument("--paper-width", action="store_true",
                        help="a randomly initialised full-width network planned on this CT instead of --model")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-tta-only", action="store_true", help="skip the 8-flip TTA run")
    parser.add_argument("--gpu-memory-gb", type=float, metavar="GB",
                        help="one more TTA run with hbseg segment --gpu-memory-gb GB (on a large GPU: the "
                             "network calls an 8 GB card would get)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume = ct_with_slices(SEED, SLICES)
        image = write_volume(volume, tmp / "ct.nii.gz")
        results["image"] = {"case_seed": SEED, "shape_zyx": list(volume.array.shape),
                            "spacing_mm": [round(v, 4) for v in volume.spacing_mm]}
        model = args.model
        if args.paper_width:
            from bench_infer import paper_width_bundle

            model = paper_width_bundle(tmp, SEED)
        results["model"] = "paper-width (random)" if args.paper_width else model
        for tta in (False,) if args.no_tta_only else (False, True):
            key = "tta8" if tta else "no_tta"
            results[key] = run_segment(image, tmp / key, model, args.device, tta)
            print(key, json.dumps(results[key]), flush=True)
        if args.gpu_memory_gb is not None and not args.no_tta_only:
            key = f"tta8_gpu_memory_{args.gpu_memory_gb:g}gb"
            results[key] = run_segment(image, tmp / key, model, args.device, True, args.gpu_memory_gb)
            print(key, json.dumps(results[key]), flush=True)
    return write_results(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
