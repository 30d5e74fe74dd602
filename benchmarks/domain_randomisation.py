"""Does domain randomisation help? Two quick models, the same budget, held-out full-variety phantoms.

Writes small full-variety phantoms (``hbseg phantom --variety full --size small``: adults and children, pelvis,
muscles, bowel, contrast phases, kernels...), trains two tiny models on the same training cases for the same number
of iterations (``--epochs`` of 10 iterations; or the same wall time with ``--minutes``, which a shared machine's
changing load makes unequal), one with the realistic rendering only and one with ``--domain-randomisation P`` (that
share of patches rendered from the tissue label map with random per-tissue intensities,
:mod:`HepatoblastomaSegLib.train.synthetic`), and segments held-out full-variety phantoms (another seed) with each.
Per model: mean tumour Dice, predicted mL, mL predicted outside the liver, and mL predicted in muscle and in
bowel/stomach/pancreas (the hard negatives).

This is a CPU-sized experiment (minutes of training, width 0.125-0.25): it shows whether the option moves false
positives and Dice in a tiny model, not what a full-length GPU run reaches. The demo models are not replaced here.

Recipe for retraining the bundled demo models on a GPU (one H100/H200 session, the existing recipe otherwise):

    hbseg phantom --modality ct --variety full --cases 200 --seed 17 --size full -o phantoms/ct_full
    hbseg train phantoms/ct_full --modality ct -o models/ct-demo --domain-randomisation 0.5 --time-limit-min 50
    (MRI likewise with --modality mri; the MRI liver model with --target liver)

Usage: ``python benchmarks/domain_randomisation.py --minutes 6 --json out.json`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HARD_NEGATIVES = {"muscle": ("MUSCLE",), "bowel_stomach_pancreas": (
    "BOWEL_WALL", "BOWEL_FLUID", "STOOL", "ORAL_CONTRAST", "STOMACH_WALL", "STOMACH_CONTENT", "PANCREAS")}


def _hbseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "HepatoblastomaSegLib.cli", *args], check=True)


def _train(dataset: Path, out: Path, modality: str, epochs: int | None, minutes: float, width: float, patch: str,
           p_synthetic: float, seed: int) -> float:
    t0 = time.perf_counter()
    budget = ["--epochs", str(epochs)] if epochs else ["--epochs", "100000", "--time-limit-min", str(minutes)]
    _hbseg("train", str(dataset), "--modality", modality, "-o", str(out), *budget,
           "--iters-per-epoch", "10", "--width", str(width), "--patch-size", patch, "--val-fraction", "0",
           "--workers", "0", "--seed", str(seed), "--progress", "none", "--domain-randomisation", str(p_synthetic))
    return time.perf_counter() - t0


def _evaluate(model: Path | str, test_dir: Path) -> dict:
    from HepatoblastomaSegLib.bundle import load_bundle
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
    from HepatoblastomaSegLib.io import read_volume
    from HepatoblastomaSegLib.phantom import read_manifest
    from HepatoblastomaSegLib.phantom.tissues import Tissue

    predictor = Predictor(load_bundle(model), PredictorOptions(device="cpu", tta=False))
    rows = []
    for row in read_manifest(test_dir / "manifest.csv"):
        image = read_volume(test_dir / row["image"])
        truth = read_volume(test_dir / row["tumor"]).array > 0
        liver = read_volume(test_dir / row["liver"]).array > 0
        tissues = read_volume(test_dir / row["tissues"]).array
        mask = predictor.predict(image).mask
        pred = np.asarray(getattr(mask, "array", mask)) > 0
        voxel_ml = image.voxel_volume_ml
        dice = 2 * float((pred & truth).sum()) / max(float(pred.sum() + truth.sum()), 1.0)
        out = {"case": row["case"], "dice": dice, "pred_ml": float(pred.sum()) * voxel_ml,
               "truth_ml": float(truth.sum()) * voxel_ml, "outside_liver_ml": float((pred & ~liver).sum()) * voxel_ml}
        for name, labels in HARD_NEGATIVES.items():
            ids = [int(Tissue[label]) for label in labels]
            out[f"{name}_ml"] = float((pred & np.isin(tissues, ids)).sum()) * voxel_ml
        rows.append(out)
    keys = [k for k in rows[0] if k != "case"]
    return {"cases": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=("ct", "mri"), default="ct")
    parser.add_argument("--train-cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--epochs", type=int, help="epochs of 10 iterations per model (the fair budget)")
    parser.add_argument("--minutes", type=float, default=6.0,
                        help="training wall time per model when --epochs is not given (default 6)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--patch-size", default="16,64,64")
    parser.add_argument("--p-synthetic", type=float, default=0.5, help="domain randomisation share (default 0.5)")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--workdir", type=Path, default=Path("dr_benchmark"))
    parser.add_argument("--reference-model", action="append", default=[], metavar="MODEL",
                        help="also segment the held-out cases with this bundle (name or folder), e.g. ct-demo")
    parser.add_argument("--reference-only", action="store_true",
                        help="only evaluate the reference models (no training)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from HepatoblastomaSegLib.phantom import write_dataset

    work = args.workdir
    train_dir, test_dir = work / "train", work / "test"
    t0 = time.perf_counter()
    if not (train_dir / "manifest.csv").is_file() and not args.reference_only:
        write_dataset(train_dir, args.modality, args.train_cases, args.seed, "small", variety="full")
    if not (test_dir / "manifest.csv").is_file():
        write_dataset(test_dir, args.modality, args.test_cases, args.seed + 1000, "small", variety="full")
    results = {"phantoms_s": time.perf_counter() - t0, "options": {k: str(v) for k, v in vars(args).items()}}
    for reference in args.reference_model:
        results[f"reference:{reference}"] = _evaluate(reference, test_dir)
        m = results[f"reference:{reference}"]["mean"]
        print(f"{reference}: Dice {m['dice']:.3f}, {m['pred_ml']:.1f} mL predicted ({m['truth_ml']:.1f} true), "
              f"{m['outside_liver_ml']:.1f} mL outside the liver, {m['muscle_ml']:.1f} mL in muscle, "
              f"{m['bowel_stomach_pancreas_ml']:.1f} mL in bowel/stomach/pancreas", flush=True)
    if args.reference_only:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        return 0
    for name, p in (("realistic", 0.0), ("domain_randomisation", args.p_synthetic)):
        model = work / f"model_{name}"
        seconds = None
        if not (model / "bundle.json").is_file():
            seconds = _train(train_dir, model, args.modality, args.epochs, args.minutes, args.width, args.patch_size, p,
                             args.seed)
        log = (model / "training" / "log.csv").read_text().strip().splitlines()
        results[name] = {"p_synthetic": p, "train_s": seconds, "epochs": len(log) - 1, **_evaluate(model, test_dir)}
    print(f"{'model':24s} {'epochs':>6s} {'Dice':>6s} {'pred mL':>8s} {'truth mL':>8s} {'outside liver mL':>16s} "
          f"{'in muscle mL':>12s} {'in bowel/pancreas mL':>20s}")
    for name in ("realistic", "domain_randomisation"):
        m, r = results[name]["mean"], results[name]
        print(f"{name:24s} {r['epochs']:6d} {m['dice']:6.3f} {m['pred_ml']:8.1f} {m['truth_ml']:8.1f} "
              f"{m['outside_liver_ml']:16.1f} {m['muscle_ml']:12.1f} {m['bowel_stomach_pancreas_ml']:20.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
