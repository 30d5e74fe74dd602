"""Does a model transfer across acquisition grids? Dice on small and full-size versions of the same phantoms.

``hbseg phantom`` with one seed and case index makes the same child whatever ``--size``: ``small`` renders it on a
128 x 128 grid (1.1-2.9 mm in-plane), ``full`` on a clinical 512 x 512 grid (0.5-0.9 mm). Both are resampled to the
model's planned spacing before the network sees them, so a model that learned the anatomy, not the grid, scores the
same on both. This script measures it per case: Dice against the phantom's ground truth, predicted / true tumour
volume, and the noise the network sees (the standard deviation of neighbouring-voxel differences inside the liver,
on the preprocessed, normalised grid, divided by sqrt 2).

Why it exists: the first GPU-trained ``ct-demo`` (trained on small phantoms) scored 0.916 on small and 0.880 on
full-size versions of the same 8 held-out cases, under-segmenting the full-size ones (volume ratio 0.62-0.94); the
full-size CTs reach the network 1.1-2.7x noisier (see ``Resources/Models/train_demo_models.py --train-size``; raw
figures in ``benchmarks/results/2026-11-27-cpu/``).

    .venv/bin/python benchmarks/grid_transfer.py --model ct-demo --seed 1001 --cases 8
    .venv/bin/python benchmarks/grid_transfer.py --model path/to/bundle --modality ct --json out.json

Cohorts are written once under ``--workdir`` and reused. CPU, no TTA (the network's own behaviour).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from HepatoblastomaSegLib.bundle import load_bundle  # noqa: E402
from HepatoblastomaSegLib.evaluate.metrics import dice  # noqa: E402
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions  # noqa: E402
from HepatoblastomaSegLib.io import read_mask, read_volume  # noqa: E402
from HepatoblastomaSegLib.phantom.dataset import write_dataset  # noqa: E402
from HepatoblastomaSegLib.preprocess import read_manifest  # noqa: E402
from HepatoblastomaSegLib.preprocess.pipeline import preprocess_image, resample_mask_to_target  # noqa: E402


def liver_noise(predictor: Predictor, image, liver) -> float:
    """Noise the network sees: SD of x-neighbour differences in the eroded liver (tumour excluded), / sqrt 2."""
    from scipy import ndimage

    prep = preprocess_image(image, predictor.bundle.plans)
    data = prep.numpy()
    inside = ndimage.binary_erosion(resample_mask_to_target(liver, prep).astype(bool), iterations=3)
    diffs = (data[:, :, 1:] - data[:, :, :-1])[inside[:, :, 1:] & inside[:, :, :-1]]
    return float(diffs.std() / np.sqrt(2)) if diffs.size else float("nan")


def score(predictor: Predictor, folder: Path) -> dict[str, dict[str, float]]:
    out = {}
    for entry in read_manifest(folder):
        image = read_volume(entry.image)
        truth = read_mask(entry.tumor, reference=image).array
        liver = read_mask(entry.liver, reference=image)
        liver = liver.with_array(((liver.array > 0) & (truth == 0)).astype(np.uint8))
        mask = predictor.predict(image).mask.array
        out[entry.case] = {"dice": float(dice(mask, truth)[0]),
                           "volume_ratio": float(mask.sum() / max(int(truth.sum()), 1)),
                           "liver_noise_sd": liver_noise(predictor, image, liver)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-demo", help="bundle name or folder (default ct-demo)")
    parser.add_argument("--seed", type=int, default=1001, help="phantom series seed (default 1001, ct-demo's "
                                                               "held-out series)")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo_models_work" / "grid_transfer")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    if bundle.modality != "ct":
        parser.error("this check covers CT tumour models (MRI needs its liver model for Nyul; not wired here)")
    predictor = Predictor(bundle, PredictorOptions(device="cpu", tta=False))
    results = {}
    for size in ("small", "full"):
        folder = args.workdir / f"{bundle.modality}-{size}-s{args.seed}-n{args.cases}"
        if not (folder / "manifest.csv").is_file():
            write_dataset(folder, bundle.modality, args.cases, args.seed, size)
        results[size] = score(predictor, folder)
    print(f"{bundle.name} {bundle.version} ({bundle.sha256[:12]}), seed {args.seed}, CPU, no TTA")
    print(f"{'case':<10} {'Dice small':>10} {'Dice full':>10} {'vol small':>10} {'vol full':>9} "
          f"{'noise small':>11} {'noise full':>10}")
    for case in results["small"]:
        s, f = results["small"][case], results["full"].get(case, {})
        print(f"{case:<10} {s['dice']:>10.3f} {f.get('dice', float('nan')):>10.3f} {s['volume_ratio']:>10.2f} "
              f"{f.get('volume_ratio', float('nan')):>9.2f} {s['liver_noise_sd']:>11.3f} "
              f"{f.get('liver_noise_sd', float('nan')):>10.3f}")
    means = {size: {k: float(np.mean([c[k] for c in per_case.values()])) for k in ("dice", "volume_ratio",
                                                                                   "liver_noise_sd")}
             for size, per_case in results.items()}
    print(f"{'mean':<10} {means['small']['dice']:>10.3f} {means['full']['dice']:>10.3f} "
          f"{means['small']['volume_ratio']:>10.2f} {means['full']['volume_ratio']:>9.2f} "
          f"{means['small']['liver_noise_sd']:>11.3f} {means['full']['liver_noise_sd']:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": bundle.name, "sha256": bundle.sha256, "seed": args.seed,
                                         "per_case": results, "mean": means}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
