"""Inference speed, end to end (read -> written files), ours against a baseline built from MONAI's stock pieces.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_infer.py [--model ct-demo] [--device auto] [--baseline] [--json out.json]

The input is a full-size phantom CT (``generate_case("ct", seed=4242, size="full")``, written as NIfTI first). For
each setting it reports seconds per stage (read, preprocess, network, resample, write) as ``hbseg segment`` records
them, plus the wall time of the whole call. ``--baseline`` also runs the same weights through MONAI's stock
pipeline (LoadImaged, EnsureChannelFirstd, Spacingd, ScaleIntensityRanged + NormalizeIntensityd with the plan's
statistics, SlidingWindowInferer with its defaults: overlap 0.25, constant weights; Invertd; SaveImaged) and reports
its wall time and the Dice between the two masks. ``--baseline-matched`` adds the same stock pipeline doing our
work: overlap 0.5 with Gaussian weights (sigma 1/8 of the window, as ours) and a softmax entropy map inverted and
saved beside the labels, so the comparison is of implementations, not of settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from HepatoblastomaSegLib.evaluate.metrics import dice
from HepatoblastomaSegLib.infer.predictor import PredictorOptions, resolve_device
from HepatoblastomaSegLib.infer.runner import segment_one
from HepatoblastomaSegLib.io import read_volume, write_volume
from HepatoblastomaSegLib.phantom import generate_case


def timed(run, out: Path, repeats: int) -> tuple[list[float], object]:
    """``run(folder)`` once untimed (CUDA context, cuDNN autotuning, lazy imports), then ``repeats`` timed runs.

    Returns the wall seconds of the timed runs and the result of the fastest one; each run writes a fresh folder.
    """
    run(out / "warmup")
    walls, results = [], []
    for i in range(repeats):
        start = time.perf_counter()
        results.append(run(out / f"run{i}"))
        walls.append(time.perf_counter() - start)
    return walls, results[int(np.argmin(walls))]


def run_ours(image: Path, out: Path, model: str, device: str, tta: bool, repeats: int) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    walls, summary_path = timed(
        lambda folder: segment_one(image, folder, PredictorOptions(model=model, device=device, tta=tta)), out, repeats)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    # What the summary cannot time: writing the outputs (mask, entropy, summary with checksums).
    write_s = min(walls) - sum(summary["seconds"].values())
    return {"wall_s": round(min(walls), 2), "wall_s_all": [round(w, 2) for w in walls],
            "stages_s": {**summary["seconds"], "write (rest of wall)": round(write_s, 3)}, "device": summary["device"],
            "tumor_volume_ml": round(summary["tumor_volume_ml"], 1), "folder": str(summary_path.parent),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if torch.cuda.is_available() else None}


def run_monai_baseline(image: Path, out: Path, model: str, device: str, repeats: int, matched: bool = False
                       ) -> dict:
    from HepatoblastomaSegLib.bundle import load_bundle

    bundle = load_bundle(model)
    plans = bundle.plans
    dev = resolve_device(device)
    net = bundle.build_network(dev)
    lo, hi = plans.ct.clip_hu  # the 0-350 HU window intersected with the training foreground percentiles

    def one_run(folder: Path) -> Path:
        return _monai_stock_once(image, folder, net, plans, dev, lo, hi, matched)

    walls, path = timed(one_run, out, repeats)
    return {"wall_s": round(min(walls), 2), "wall_s_all": [round(w, 2) for w in walls], "path": str(path)}


def _monai_stock_once(image: Path, out: Path, net, plans, dev, lo: float, hi: float, matched: bool = False) -> Path:
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    pre = Compose([
        LoadImaged("image", image_only=False), EnsureChannelFirstd("image"),
        # MONAI's reader gives (x, y, z) arrays; the plan's spacing is stored (x, y, z) too.
        Spacingd("image", pixdim=plans.target_spacing_mm_xyz, mode="bilinear"),
        ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True),
        NormalizeIntensityd("image", subtrahend=plans.ct.mean_hu, divisor=plans.ct.std_hu),
    ])
    data = pre({"image": str(image)})
    x = data["image"][None].to(dev)
    # Our network expects [B, C, z, y, x]; MONAI's loader gives [B, C, x, y, z].
    window = {"overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125} if matched else {}
    inferer = SlidingWindowInferer(roi_size=list(plans.patch_size_zyx[::-1]), sw_batch_size=2, **window)
    with torch.inference_mode():
        logits = inferer(x, lambda t: net(t.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2))
    keys = ["pred"]
    data["pred"] = torch.argmax(logits, dim=1, keepdim=True)[0].cpu().to(torch.uint8)
    if matched:
        probs = torch.softmax(logits.float(), dim=1)
        data["entropy"] = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1, keepdim=True)[0].cpu()
        keys.append("entropy")
    for key in keys:
        data[key].applied_operations = data["image"].applied_operations
        data[key].meta = data["image"].meta
    post = [Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True),
            SaveImaged("pred", output_dir=str(out), output_postfix="seg", separate_folder=False,
                       output_dtype=np.uint8, resample=False)]
    if matched:
        post += [Invertd("entropy", transform=pre, orig_keys="image", nearest_interp=False),
                 SaveImaged("entropy", output_dir=str(out), output_postfix="entropy", separate_folder=False,
                            output_dtype=np.float32, resample=False)]
    Compose(post)(data)
    return next(Path(out).glob("*seg*"))


def paper_width_bundle(folder: Path) -> str:
    """A randomly initialised bundle with the paper's full-width network, planned on 3 full-size phantom CTs.

    Speed does not depend on the weights, so this measures the paper's network without a trained one.
    """
    from HepatoblastomaSegLib.bundle import save_bundle
    from HepatoblastomaSegLib.network import build_network
    from HepatoblastomaSegLib.phantom import write_dataset
    from HepatoblastomaSegLib.preprocess import plan_dataset

    write_dataset(folder / "plan_data", "ct", 3, seed=4300, size="full")
    plans = plan_dataset(folder / "plan_data", "ct")
    torch.manual_seed(0)
    net = build_network(plans, width=1.0)
    card = "# random paper-width network\n\nUntrained; for speed benchmarks only. Not for clinical use.\n"
    save_bundle(folder / "ct-paper-random", net, plans, name="ct-paper-random", version="0.0.1", modality="ct",
                card_markdown=card, width=1.0, labels={"tumor": (255, 0, 0)})
    print(f"paper-width bundle: patch {plans.patch_size_zyx}, strides {plans.topology.strides_zyx}", flush=True)
    return str(folder / "ct-paper-random")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--baseline", action="store_true", help="also run MONAI's stock pipeline")
    parser.add_argument("--baseline-matched", action="store_true",
                        help="also run the stock pipeline doing our work (overlap 0.5, Gaussian weights, entropy map)")
    parser.add_argument("--no-tta-only", action="store_true", help="skip the 8-flip TTA run (slow on a CPU)")
    parser.add_argument("--paper-width", action="store_true",
                        help="time a randomly initialised full-width (32..320) network planned on full-size phantoms "
                             "instead of --model (the paper's speed; the masks are then meaningless)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per setting after one untimed warm-up; the fastest is reported (default 1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.paper_width:
            args.model = paper_width_bundle(tmp)
        case = generate_case("ct", seed=4242, index=0, size="full")
        image = write_volume(case.image, tmp / "ct.nii.gz")
        results["image"] = {"shape_zyx": list(case.image.array.shape), "spacing_mm": list(case.image.spacing_mm)}
        results["repeats"] = args.repeats
        results["ours_no_tta"] = run_ours(image, tmp / "no_tta", args.model, args.device, False, args.repeats)
        print(json.dumps(results["ours_no_tta"]), flush=True)
        if not args.no_tta_only:
            results["ours_tta8"] = run_ours(image, tmp / "tta", args.model, args.device, True, args.repeats)
            print(json.dumps(results["ours_tta8"]), flush=True)
        ours = read_volume(Path(results["ours_no_tta"].pop("folder")) / "segmentation.nii.gz").array
        results.get("ours_tta8", {}).pop("folder", None)
        truth = case.tumor.array
        results["dice_ours_vs_truth"] = round(dice(ours, truth)[0], 4)
        for key, wanted, matched in (("monai_stock", args.baseline, False),
                                     ("monai_stock_matched", args.baseline_matched, True)):
            if not wanted:
                continue
            base = run_monai_baseline(image, tmp / key, args.model, args.device, args.repeats, matched=matched)
            theirs = read_volume(base.pop("path")).array
            base["dice_vs_ours"] = round(dice(theirs, ours)[0], 4)
            base["speedup_ours"] = round(base["wall_s"] / results["ours_no_tta"]["wall_s"], 2)
            results[key] = base
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
