"""nnU-Net v2's own ``nnUNetPredictor`` against ``hbseg segment`` on the same imported weights and image.

Run by hand (not a test)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_nnunet.py [--device cpu|cuda] [--mirror] [--folds 1]
        [--features 32,64,128,256,320] [--patch 40,112,112] [--case-size small|full] [--kernels auto|fast|nnunet]
        [--threads N] [--rounds N] [--json out.json]

A v2 model folder is built with the real ``nnunetv2`` package (its network builder and checkpoint layout, random
weights: speed does not depend on what the weights learned) at nnU-Net's default widths, a phantom CT of
``--case-size`` is the image, both at the same target spacing (``--spacing``, z,y,x mm). Reported: seconds end to end
from the image array in memory to the full-size softmax and mask (nnU-Net: ``predict_single_npy_array`` with
probabilities; ours: :class:`~HepatoblastomaSegLib.infer.nnunet.NnUNetBundlePredictor.predict`, which also computes
the entropy map and the summary), after one warm-up run of each, the fastest of ``--rounds`` alternating timed runs;
the largest softmax difference and the Dice between the tumour masks. ``--kernels`` is
:class:`~HepatoblastomaSegLib.infer.nnunet.NnUNetEngine`'s (``auto``: nnU-Net's own kernels for a v2 model, bit for bit;
``fast``: oneDNN convolutions and fused instance norms on the CPU). On ``--device cuda`` both run under autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))

from helpers_nnunet import dice, make_v2_folder  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mirror", action="store_true", help="mirroring TTA on (both)")
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument("--features", type=_ints, default=(32, 64, 128, 256, 320))
    parser.add_argument("--patch", type=_ints, default=(32, 128, 128))
    parser.add_argument("--spacing", type=lambda t: tuple(float(v) for v in t.split(",")), default=(2.5, 1.6, 1.6))
    parser.add_argument("--case-size", choices=("small", "full"), default="small")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, theirs and ours alternating (min)")
    parser.add_argument("--kernels", choices=("auto", "fast", "nnunet"), default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from HepatoblastomaSegLib.bundle import load_bundle
    from HepatoblastomaSegLib.importers.nnunet import import_nnunet
    from HepatoblastomaSegLib.infer.nnunet import NnUNetBundlePredictor
    from HepatoblastomaSegLib.phantom import generate_case

    n = len(args.features)
    strides = [(1, 1, 1)] + [(1, 2, 2) if i == 1 else (2, 2, 2) for i in range(1, n)]
    kernels = [(1, 3, 3)] + [(3, 3, 3)] * (n - 1)
    case = generate_case("ct", 2816, 0, args.case_size)
    image = case.image.array.astype(np.float32)
    spacing = tuple(float(s) for s in case.image.spacing_mm[::-1])
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_v2_folder(Path(tmp), modality="ct", folds=tuple(range(args.folds)), patch=args.patch,
                                spacing_zyx=args.spacing, features=args.features, strides=strides, kernels=kernels)
        bundle = load_bundle(import_nnunet(folder, Path(tmp) / "bundle"))
        device = torch.device(args.device)
        theirs = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.mirror,
                                 perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                 verbose_preprocessing=False, allow_tqdm=False)
        theirs.initialize_from_trained_model_folder(str(folder), use_folds=tuple(range(args.folds)),
                                                    checkpoint_name="checkpoint_final.pth")
        ours = NnUNetBundlePredictor(bundle, device=args.device, tta=args.mirror, kernels=args.kernels)

        def run_theirs():
            return theirs.predict_single_npy_array(image[None], {"spacing": list(spacing)}, None, None, True)

        def run_ours():
            return ours.predict(case.image)

        def timed(fn):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out, time.perf_counter() - t0

        run_theirs(), run_ours()  # warm-up
        theirs_runs, ours_runs = [], []
        for _ in range(args.rounds):  # alternating, so that a slow spell of a shared machine hits both
            (seg, probs), seconds = timed(run_theirs)
            theirs_runs.append(seconds)
            prediction, seconds = timed(run_ours)
            ours_runs.append(seconds)
        theirs_s, ours_s = min(theirs_runs), min(ours_runs)
        ours_probs = ours.engine.probabilities(image[None], spacing, mirror=args.mirror)
    result = {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": args.device, "mirror": args.mirror, "folds": args.folds,
        "kernels": prediction.summary["nnunet"]["kernels"], "load_average": [round(v, 2) for v in os.getloadavg()],
        "image_shape_zyx": list(image.shape), "spacing_mm_zyx": list(spacing), "target_spacing_mm_zyx":
        list(args.spacing), "patch": list(args.patch), "features": list(args.features),
        "sliding_windows": prediction.summary["sliding_windows"],
        "nnunet_s": round(theirs_s, 3), "hbseg_s": round(ours_s, 3), "speedup": round(theirs_s / ours_s, 3),
        "nnunet_runs_s": [round(v, 3) for v in theirs_runs], "hbseg_runs_s": [round(v, 3) for v in ours_runs],
        "max_softmax_difference": float(np.abs(ours_probs - probs).max()),
        "dice_tumor_masks": dice(prediction.mask.array, seg == 2),
        "tumor_voxels_nnunet": int((seg == 2).sum()),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
