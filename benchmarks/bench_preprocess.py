"""Preprocessing speed: a full-size CT through ``preprocess_image`` (both resampling backends), probabilities back
to the original grid, and N4 on a full-size T2-like MRI with its residual bias.

Run by hand (not a test): ``.venv/bin/python benchmarks/bench_preprocess.py [--threads 2] [--json out.json]``.
The volumes are synthesised here (deterministic): a 512x512x100 int16 CT at 0.7x0.7x2.5 mm (air, body, liver,
tumour, 15 HU noise) and a 320x320x40 float32 T2-like MRI at 1.2x1.2x6 mm multiplied by a known smooth bias field.
Each step is timed once (the build machine is shared, so figures may be pessimistic).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import SimpleITK as sitk
import torch

from HepatoblastomaSegLib.io import Geometry, Volume
from HepatoblastomaSegLib.preprocess import Plans, plan_topology, preprocess_image, resample_to_original
from HepatoblastomaSegLib.preprocess.n4 import n4_correct
from HepatoblastomaSegLib.preprocess.plans import CTIntensity, N4Settings, SpacingPlan


def synthetic_ct(shape_zyx=(100, 512, 512), spacing_xyz=(0.7, 0.7, 2.5), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    y, x = np.ogrid[:ny, :nx]
    body = ((y - ny / 2) / (0.42 * ny)) ** 2 + ((x - nx / 2) / (0.46 * nx)) ** 2 < 1
    liver = ((y - 0.45 * ny) / (0.2 * ny)) ** 2 + ((x - 0.4 * nx) / (0.22 * nx)) ** 2 < 1
    tumour = ((y - 0.45 * ny) / (0.08 * ny)) ** 2 + ((x - 0.38 * nx) / (0.08 * nx)) ** 2 < 1
    plane = np.full((ny, nx), -1000.0)
    plane[body], plane[liver], plane[tumour] = 30.0, 110.0, 70.0
    image = np.empty(shape_zyx, np.int16)
    for k in range(nz):  # slice by slice keeps the peak memory small
        image[k] = np.clip(plane + rng.normal(0, 15, (ny, nx)), -1024, 3071).astype(np.int16)
    return Volume(image, Geometry(shape_zyx[::-1], spacing_xyz, (-180.0, -180.0, 0.0)))


def ct_plans(target_xyz) -> Plans:
    topo = plan_topology(target_xyz[::-1], (110, 400, 400), num_cases=56)
    return Plans(modality="ct", labels={"background": 0, "tumor": 1}, spacing=SpacingPlan(tuple(target_xyz)),
                 topology=topo, ct=CTIntensity((0.0, 350.0), (0.5, 99.5), (35.0, 150.0), 85.0, 25.0))


def synthetic_mri(shape_zyx=(40, 320, 320), spacing_xyz=(1.2, 1.2, 6.0), seed=1):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    nz, ny, nx = shape_zyx
    body = ((y - ny / 2) / (0.42 * ny)) ** 2 + ((x - nx / 2) / (0.45 * nx)) ** 2 < 1
    liver = body & ((((y - 0.45 * ny) / (0.2 * ny)) ** 2 + ((x - 0.4 * nx) / (0.22 * nx)) ** 2) < 1)
    clean = np.full(shape_zyx, 5.0, np.float32)
    clean[body], clean[liver] = 250.0, 180.0
    bias = np.exp(0.5 * (x - nx / 2) / nx + 0.3 * (y - ny / 2) / ny + 0.15 * (z - nz / 2) / nz).astype(np.float32)
    image = np.abs(clean * bias + rng.normal(0, 5, shape_zyx).astype(np.float32))
    return Volume(image.astype(np.float32), Geometry(shape_zyx[::-1], spacing_xyz, (0.0, 0.0, 0.0))), clean, body


def synced(prep):
    """``prep`` once its tensor is really computed (CUDA kernels run asynchronously)."""
    if prep.data.is_cuda:
        torch.cuda.synchronize(prep.data.device)
    return prep


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and SimpleITK (default 2)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--device", default="cpu",
                        help="where the torch path runs: cpu (default) or cuda (timed after one warm-up call)")
    parser.add_argument("--skip-n4", action="store_true", help="skip the N4 benchmark (about 15 s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    results: dict[str, float] = {}

    ct = synthetic_ct()
    print(f"CT {ct.array.shape[::-1]} voxels (x, y, z) at {ct.spacing_mm} mm, {args.threads} threads")
    for label, target in (("same spacing", (0.7, 0.7, 2.5)), ("in-plane only", (0.78, 0.78, 2.5)),
                          ("all axes", (0.8, 0.8, 2.0))):
        plans = ct_plans(target)
        for backend in ("sitk", "torch"):
            device = args.device if backend == "torch" else "cpu"
            if device != "cpu":
                preprocess_image(ct, plans, backend=backend, device=device)  # CUDA context and kernels warm
            prep, seconds = timed(lambda: synced(preprocess_image(ct, plans, backend=backend, device=device)))
            key = f"ct_preprocess_{label.replace(' ', '_').replace('-', '_')}_{backend}_{device}_s"
            results[key] = seconds
            print(f"  preprocess_image, target {target} ({label}), {backend:5s}: {seconds:6.2f} s "
                  f"-> {tuple(prep.data.shape)} [resample {prep.seconds['resample']:.2f} s]")
        probs = torch.stack([1 - torch.sigmoid(prep.data), torch.sigmoid(prep.data)])
        for backend in ("sitk", "torch"):
            _, seconds = timed(lambda: resample_to_original(probs if backend == "torch" else probs.cpu().numpy(),
                                                            prep, backend=backend))
            results[f"ct_back_{label.replace(' ', '_').replace('-', '_')}_{backend}_s"] = seconds
            print(f"  resample_to_original, 2 channels, {backend:5s}: {seconds:6.2f} s")
        del prep, probs

    if not args.skip_n4:
        mri, clean, body = synthetic_mri()

        def residual(a):
            return float(np.log(np.maximum(a[body], 1e-3) / clean[body]).std())

        settings = N4Settings()
        result, seconds = timed(lambda: n4_correct(mri, settings))
        results.update(n4_s=seconds, n4_residual_before=residual(mri.array),
                       n4_residual_after=residual(result.corrected.array))
        print(f"N4 on {mri.array.shape[::-1]} voxels at {mri.spacing_mm} mm, shrink {result.shrink_xyz}, "
              f"iterations {settings.iterations}: {seconds:.1f} s; residual bias (SD of log(corrected/true) in the "
              f"body) {results['n4_residual_before']:.3f} -> {results['n4_residual_after']:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
