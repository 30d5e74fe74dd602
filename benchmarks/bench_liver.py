"""The CT liver step on its own: seconds and liver Dice of ``ct-liver-demo`` per sliding-window overlap.

What ``hbseg segment`` runs for a CT's liver anchor (:meth:`Predictor._liver_mask`): the liver bundle on the CT's body
box (:func:`~HepatoblastomaSegLib.preprocess.liver.liver_mask_from_model`), pasted back onto the whole image. On
full-size phantom CTs (the demo CT first, then ``--cases`` more from ``--seed``) it reports per overlap the windows,
the seconds (the model loaded beforehand, as in a warm worker) and the Dice against the phantom's liver including its
tumour (the liver model's label). Run by hand:

    python benchmarks/bench_liver.py --cases 3 --overlaps 0.5 0.2 --json liver.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_results  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def phantom_cases(folder: Path, cases: int, seed: int) -> list[Path]:
    from HepatoblastomaSegLib.cli.demo import DEMO_SEED
    from HepatoblastomaSegLib.phantom import read_manifest, write_dataset

    folders = []
    for name, count, case_seed in (("demo", 1, DEMO_SEED), ("more", cases, seed)):
        if count:
            manifest = write_dataset(folder / name, "ct", count, case_seed, "full")
            folders += [manifest.parent / row["case"] for row in read_manifest(manifest)]
    return folders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3, help="phantom CTs besides the demo CT")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.5])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from HepatoblastomaSegLib.bundle import load_bundle
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
    from HepatoblastomaSegLib.io import read_volume
    from HepatoblastomaSegLib.preprocess import preprocess_image
    from HepatoblastomaSegLib.preprocess.body_crop import crop_volume, paste
    from HepatoblastomaSegLib.preprocess.liver import liver_mask_from_model
    from HepatoblastomaSegLib.sliding_window import count_windows

    predictor = Predictor(load_bundle("ct-demo"), PredictorOptions(device="cpu", tta=False), liver_bundle=load_bundle("ct-liver-demo"))
    liver_bundle = predictor.liver_bundle
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-liver-") as tmp:
        for case in phantom_cases(Path(tmp), args.cases, args.seed):
            image = read_volume(case / "image.nii.gz")
            truth = (read_volume(case / "liver.nii.gz").array > 0) | (read_volume(case / "tumor.nii.gz").array > 0)
            box = predictor.body_box(image)
            work = image if box is None else crop_volume(image, box)
            shape = tuple(preprocess_image(work, liver_bundle.plans, checked=True).data.shape)
            row = {"case": f"{case.parent.parent.name}/{case.name}", "liver_grid_zyx": list(shape)}
            for overlap in args.overlaps:
                t0 = time.perf_counter()
                liver = liver_mask_from_model(work, liver_bundle, device="cpu", checked=True, overlap=overlap).array
                seconds = time.perf_counter() - t0
                liver = liver if box is None else paste(liver, box, image.array.shape)
                row[f"overlap_{overlap}"] = {
                    "windows": count_windows(shape, liver_bundle.plans.patch_size_zyx, overlap),
                    "seconds": round(seconds, 2), "dice": round(dice(liver, truth), 4)}
            rows.append(row)
    medians = {f"overlap_{o}": {"median_seconds": statistics.median(r[f"overlap_{o}"]["seconds"] for r in rows),
                                "mean_dice": round(statistics.mean(r[f"overlap_{o}"]["dice"] for r in rows), 4)}
               for o in args.overlaps}
    return write_results({"model": "ct-liver-demo", "device": "cpu", "cases": rows, "summary": medians}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
