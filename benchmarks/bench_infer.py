"""Inference speed, end to end (read -> written files), ours against a baseline built from MONAI's stock pieces.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_infer.py [--model ct-demo] [--device auto] [--baseline] [--json out.json]

The input is a full-size phantom CT written as NIfTI: by default ``generate_case("ct", seed=2816, size="full")``,
512x512x101 voxels at 0.705x0.705x2.5 mm, the size the inference issue names (512x512x~100 at 0.7x0.7x2.5 mm);
``--case-seed 4242`` gives the smaller CT of the first measurements (512x512x59 at 0.5x0.5x3 mm). For each setting
it reports seconds per stage (read, preprocess, network, resample, write) as ``hbseg segment`` records them, plus
the wall time of the whole call: once as ``hbseg segment IMAGE`` does it (the model loaded in the call), and once
with the model loaded beforehand (``*_model_loaded``), as a cohort run does for every case after the first and as
the stock baseline's network is; speed-ups are taken between the latter. ``--baseline`` also runs the same weights
through MONAI's stock pipeline (LoadImaged, EnsureChannelFirstd, Spacingd, ScaleIntensityRanged +
NormalizeIntensityd with the plan's statistics, SlidingWindowInferer with its defaults: overlap 0.25, constant
weights; Invertd; SaveImaged) and reports its wall time and the Dice between the two masks. ``--baseline-matched``
adds the same stock pipeline doing our work, so the comparison is of implementations, not of settings: the image
resampled onto our grid (Spacingd keeping the voxels' extent, with cubic splines in-plane, ``--matched-image-mode``
to change, and nearest neighbour across thick slices, as the plan says); overlap 0.5 with Gaussian weights (sigma
1/8 of the window) averaging each window's softmax; the tumour probability, not the argmax, inverted to the input
grid (Invertd, same interpolation) and thresholded at 0.5 there (as ours and nnU-Net; stock Invertd takes labels
back nearest-neighbour); and an entropy map from that probability, saved beside the labels.

Ours crops a CT to the child's trunk by default (``hbseg segment --crop-to-body``): fewer windows, and another window
tiling than on the whole image. ``--full-image`` adds ours on the whole image (``*_full_image``), the like-for-like
partner of the stock pipelines, which run on the whole image; the stock results then also carry
``dice_vs_ours_full_image`` and ``speedup_ours_full_image``. Every run of ours reports ``dice_vs_truth``.
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
from report import write_results  # benchmarks/ (the script's folder) is on sys.path


def timed_interleaved(runs: dict, out: Path, repeats: int, warmup_s: dict | None = None
                      ) -> dict[str, tuple[list[float], object]]:
    """Each ``runs[name](folder)`` once as a warm-up (CUDA context, cuDNN autotuning, torch.compile, lazy imports),
    then ``repeats`` rounds in which every setting runs once in turn, so a slow spell of a shared machine hits all
    settings alike.

    Returns, per name, the wall seconds of its timed runs (round order) and the result of its fastest run; each run
    writes a fresh folder. The warm-ups' seconds go into ``warmup_s`` when given.
    """
    for name, run in runs.items():
        start = time.perf_counter()
        run(out / name / "warmup")
        if warmup_s is not None:
            warmup_s[name] = round(time.perf_counter() - start, 2)
    timings: dict[str, tuple[list[float], list]] = {name: ([], []) for name in runs}
    for i in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            result = run(out / name / f"run{i}")
            timings[name][0].append(time.perf_counter() - start)
            timings[name][1].append(result)
    return {name: (walls, results[int(np.argmin(walls))]) for name, (walls, results) in timings.items()}


def ours_runner(image: Path, model: str, device: str, tta: bool, crop_to_body: bool = True):
    """``hbseg segment`` on ``image``; returns the summary's path (and notes the peak GPU memory in it)."""
    def run(folder: Path) -> Path:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        path = segment_one(image, folder, PredictorOptions(model=model, device=device, tta=tta,
                                                           crop_to_body=crop_to_body))
        if torch.cuda.is_available():
            (folder / "peak_gpu_memory_gib").write_text(f"{torch.cuda.max_memory_allocated() / 2**30:.2f}")
        return path
    return run


def ours_loaded_runner(image: Path, model: str, device: str, tta: bool, compile: bool = False,
                       crop_to_body: bool = True):
    """Our per-case work with the model loaded once beforehand, as in a cohort run (and as the stock baseline's
    network is): read, predict, write. Returns the summary's path. ``compile``: ``hbseg segment --compile`` (its
    compilation falls in the warm-up run); ``crop_to_body=False``: ``--no-crop-to-body``."""
    from HepatoblastomaSegLib.infer.outputs import write_prediction
    from HepatoblastomaSegLib.infer.predictor import Predictor

    predictor = Predictor.from_options(PredictorOptions(model=model, device=device, tta=tta, compile=compile,
                                                        crop_to_body=crop_to_body), modality="ct")

    def run(folder: Path) -> Path:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        volume = read_volume(image)
        read_s = time.perf_counter() - start
        prediction = predictor.predict(volume)
        prediction.summary["seconds"] = {"read": round(read_s, 4), **prediction.summary["seconds"]}
        path = write_prediction(prediction, folder)
        if torch.cuda.is_available():
            (folder / "peak_gpu_memory_gib").write_text(f"{torch.cuda.max_memory_allocated() / 2**30:.2f}")
        return path
    return run


def ours_result(walls: list[float], summary_path: Path) -> dict:
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    # What the summary cannot time: writing the outputs (mask, entropy, summary with checksums).
    write_s = min(walls) - sum(summary["seconds"].values())
    peak = summary_path.parent / "peak_gpu_memory_gib"
    return {"wall_s": round(min(walls), 2), "wall_s_all": [round(w, 2) for w in walls],
            "stages_s": {**summary["seconds"], "write (rest of wall)": round(write_s, 3)}, "device": summary["device"],
            "tumor_volume_ml": round(summary["tumor_volume_ml"], 1), "folder": str(summary_path.parent),
            "sliding_windows": summary.get("sliding_windows"), "body_crop": summary.get("body_crop"),
            "peak_gpu_memory_gib": float(peak.read_text()) if peak.exists() else None}


def monai_runner(image: Path, model: str, device: str, matched: bool = False, image_mode: str | int = "bilinear"):
    """MONAI's stock pipeline on ``image`` with ``model``'s weights; returns the saved mask's path."""
    from HepatoblastomaSegLib.bundle import load_bundle

    bundle = load_bundle(model)
    plans = bundle.plans
    dev = resolve_device(device)
    net = bundle.build_network(dev)
    lo, hi = plans.ct.clip_hu  # the 0-350 HU window intersected with the training foreground percentiles
    spacing = _matched_spacing(read_volume(image).geometry, plans, image_mode) if matched else None
    return lambda folder: _monai_stock_once(image, folder, net, plans, dev, lo, hi, matched, spacing)


def _monai_stock_once(image: Path, out: Path, net, plans, dev, lo: float, hi: float, matched: bool = False,
                      spacing: list | None = None) -> Path:
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

    # MONAI's reader gives (x, y, z) arrays; the plan's spacing is stored (x, y, z) too.
    spacing = spacing or [Spacingd("image", pixdim=plans.target_spacing_mm_xyz, mode="bilinear")]
    pre = Compose([
        LoadImaged("image", image_only=False), EnsureChannelFirstd("image"), *spacing,
        ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True),
        NormalizeIntensityd("image", subtrahend=plans.ct.mean_hu, divisor=plans.ct.std_hu),
    ])
    data = pre({"image": str(image)})
    x = data["image"][None].to(dev)
    # Our network expects [B, C, z, y, x]; MONAI's loader gives [B, C, x, y, z].
    window = {"overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125} if matched else {}
    inferer = SlidingWindowInferer(roi_size=list(plans.patch_size_zyx[::-1]), sw_batch_size=2, **window)

    def window_logits(t: torch.Tensor) -> torch.Tensor:
        return net(t.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)

    with torch.inference_mode():
        if matched:  # as ours and nnU-Net: each window's softmax is averaged, not its logits
            probs = inferer(x, lambda t: torch.softmax(window_logits(t).float(), dim=1))
        else:
            logits = inferer(x, window_logits)
    if matched:
        # Our work: the tumour probability goes back to the input grid, the label is decided there.
        data["prob"] = probs[0, 1:2].cpu()
        key = "prob"
    else:
        data["pred"] = torch.argmax(logits, dim=1, keepdim=True)[0].cpu().to(torch.uint8)
        key = "pred"
    data[key].applied_operations = data["image"].applied_operations
    data[key].meta = data["image"].meta
    # Invertd offers the forward interpolation (cubic in-plane, nearest across slices here) or nearest everywhere;
    # ours takes probabilities back linearly in-plane, as nnU-Net.
    data = Invertd(key, transform=pre, orig_keys="image", nearest_interp=not matched)(data)
    if matched:
        p = data["prob"].clamp(0.0, 1.0)
        data["pred"] = (p > 0.5).to(torch.uint8)
        q = torch.stack((1.0 - p, p))
        data["entropy"] = -(q * torch.log(q.clamp_min(1e-12))).sum(dim=0)
        for name in ("pred", "entropy"):
            data[name].meta = data["prob"].meta
    for name, dtype in (("pred", np.uint8), ("entropy", np.float32)) if matched else (("pred", np.uint8),):
        SaveImaged(name, output_dir=str(out), output_postfix="seg" if name == "pred" else "entropy",
                   separate_folder=False, output_dtype=dtype, resample=False)(data)
    return next(Path(out).glob("*seg*"))


def _matched_spacing(original, plans, image_mode: str | int) -> list:
    """Stock ``Spacingd`` configured for our grid, so the network sees what ours sees.

    The voxels' full extent is kept (``scale_extent``, as ours and nnU-Net's resize: without it the grid shifts by a
    fraction of a voxel and the masks agree at Dice 0.97), and where the plan resamples a thick-slice axis separately
    with nearest neighbour, there are two passes (in-plane with ``image_mode``, then that axis nearest).
    """
    from monai.transforms import Spacingd

    from HepatoblastomaSegLib.preprocess.resample import lowres_axis_zyx, target_geometry

    target = target_geometry(original, plans.target_spacing_mm_xyz)
    axis_zyx = lowres_axis_zyx(original, target, plans.resampling.separate_z_anisotropy_threshold)
    # The effective spacing (extent / voxel count), not the plan's: with ``scale_extent`` Spacingd spreads the samples
    # over the extent but labels the output with the pixdim it was given, so Invertd (which trusts that label) would
    # drift by a slice over 59 slices (Dice 0.987 instead of 0.998 here, from the label alone).
    spacing = target.spacing_mm
    final = Spacingd("image", pixdim=spacing, mode=image_mode, scale_extent=True)
    if axis_zyx is None:
        return [final]
    axis_xyz = 2 - axis_zyx
    in_plane = list(spacing)
    in_plane[axis_xyz] = original.spacing_mm[axis_xyz]
    return [Spacingd("image", pixdim=in_plane, mode=image_mode, scale_extent=True),
            Spacingd("image", pixdim=spacing, mode="nearest", scale_extent=True)]


def paper_width_bundle(folder: Path, case_seed: int) -> str:
    """A randomly initialised bundle with the paper's full-width network, planned on the benchmark CT itself.

    Speed does not depend on the weights, so this measures the paper's network without a trained one. Planned on the
    measured CT, the target spacing is the CT's own (no resampling), as for a scan at the training set's median
    spacing, which is what the issue's 0.7x0.7x2.5 mm case stands for; the default case then gets a 40x224x224 patch
    and 80 windows at overlap 0.5. (Planned on three phantoms of small children instead, as the GPU runs of
    2026-11-27 were, the target is 0.5 mm in-plane and the 0.705 mm case is upsampled to 216 windows.)
    """
    from HepatoblastomaSegLib.bundle import save_bundle
    from HepatoblastomaSegLib.network import build_network
    from HepatoblastomaSegLib.phantom import write_dataset
    from HepatoblastomaSegLib.preprocess import plan_dataset

    write_dataset(folder / "plan_data", "ct", 1, seed=case_seed, size="full")
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
    parser.add_argument("--matched-image-mode", default="3",
                        help="Spacingd mode for the image in the matched baseline: a spline order (3: cubic, as ours) "
                             "or a MONAI mode name such as bilinear (default 3); several, comma-separated, run one "
                             "matched baseline each (monai_stock_matched, then monai_stock_matched_<mode>)")
    parser.add_argument("--no-tta-only", action="store_true", help="skip the 8-flip TTA run (slow on a CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="also time ours with the model loaded and compiled (hbseg segment --compile); the "
                             "compilation falls in the untimed warm-up, whose seconds are reported as first_run_s")
    parser.add_argument("--only", help="comma-separated settings to run (of ours_no_tta, ours_no_tta_model_loaded, "
                                       "ours_tta8, ours_tta8_model_loaded, their *_compiled and *_full_image forms, "
                                       "monai_stock, monai_stock_matched[_<mode>]); default all that the other "
                                       "options ask for")
    parser.add_argument("--full-image", action="store_true",
                        help="also time ours on the whole image (hbseg segment --no-crop-to-body; *_full_image "
                             "settings): the stock pipelines run on the whole image, so this is the like-for-like "
                             "comparison, and the Dice between the two shows what the crop's other window tiling "
                             "changes")
    parser.add_argument("--paper-width", action="store_true",
                        help="time a randomly initialised full-width (32..320) network planned on the benchmark CT "
                             "instead of --model (the paper's speed; the masks are then meaningless)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed rounds after one untimed warm-up of each setting; a round runs every setting "
                             "once, in turn; the fastest run per setting is reported (default 1)")
    parser.add_argument("--case-seed", type=int, default=2816,
                        help="phantom seed of the CT: 2816 (default) 512x512x101 at 0.705x0.705x2.5 mm; 4242 "
                             "512x512x59 at 0.5x0.5x3 mm (the earlier measurements)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.paper_width:
            args.model = paper_width_bundle(tmp, args.case_seed)
        case = generate_case("ct", seed=args.case_seed, index=0, size="full")
        image = write_volume(case.image, tmp / "ct.nii.gz")
        results["image"] = {"case_seed": args.case_seed, "shape_zyx": list(case.image.array.shape),
                            "spacing_mm": list(case.image.spacing_mm)}
        results["repeats"] = args.repeats
        modes = [int(m) if m.isdigit() else m for m in args.matched_image_mode.split(",")]
        runs = {"ours_no_tta": ours_runner(image, args.model, args.device, tta=False),
                "ours_no_tta_model_loaded": ours_loaded_runner(image, args.model, args.device, tta=False)}
        if not args.no_tta_only:
            runs["ours_tta8"] = ours_runner(image, args.model, args.device, tta=True)
            runs["ours_tta8_model_loaded"] = ours_loaded_runner(image, args.model, args.device, tta=True)
        if args.compile:
            runs["ours_no_tta_model_loaded_compiled"] = ours_loaded_runner(image, args.model, args.device, tta=False,
                                                                           compile=True)
            if not args.no_tta_only:
                runs["ours_tta8_model_loaded_compiled"] = ours_loaded_runner(image, args.model, args.device,
                                                                             tta=True, compile=True)
        if args.full_image:
            for tta in (False, True) if not args.no_tta_only else (False,):
                key = "ours_tta8_model_loaded_full_image" if tta else "ours_no_tta_model_loaded_full_image"
                runs[key] = ours_loaded_runner(image, args.model, args.device, tta=tta, crop_to_body=False)
        if args.baseline:
            runs["monai_stock"] = monai_runner(image, args.model, args.device)
        if args.baseline_matched:
            for i, mode in enumerate(modes):  # the first mode is "monai_stock_matched", others get a suffix
                runs["monai_stock_matched" + (f"_{mode}" if i else "")] = monai_runner(
                    image, args.model, args.device, matched=True, image_mode=mode)
        if args.only:
            wanted = [name.strip() for name in args.only.split(",") if name.strip()]
            unknown = sorted(set(wanted) - set(runs))
            if unknown:
                parser.error(f"--only: {', '.join(unknown)} not among the settings asked for ({', '.join(runs)})")
            runs = {name: run for name, run in runs.items() if name in wanted}
        warmup_s: dict[str, float] = {}
        timings = timed_interleaved(runs, tmp / "runs", args.repeats, warmup_s)
        ours_keys = [key for key in timings if key.startswith("ours_")]
        for key in ours_keys:
            results[key] = {**ours_result(*timings[key]), "first_run_s": warmup_s[key]}
            print(json.dumps(results[key]), flush=True)
        reference = next(key for key in ("ours_no_tta", "ours_no_tta_model_loaded", *ours_keys) if key in timings)
        ours = read_volume(Path(results[reference]["folder"]) / "segmentation.nii.gz").array
        results["dice_ours_vs_truth"] = round(dice(ours, case.tumor.array)[0], 4)
        results["reference_for_dice"] = reference
        masks, full_folders = {}, {}
        for key in ours_keys:
            folder = Path(results[key].pop("folder"))
            masks[key] = read_volume(folder / "segmentation.nii.gz").array
            if key.endswith("_full_image"):
                full_folders[key] = folder
            if key != reference:
                results[key]["dice_vs_reference"] = round(dice(masks[key], ours)[0], 4)
        # Speed-ups on the same footing: the stock pipeline's network is built outside its timing, so ours is the
        # run with the model loaded beforehand too.
        ours_walls = timings.get("ours_no_tta_model_loaded", timings[reference])[0]
        full_key = "ours_no_tta_model_loaded_full_image"
        ours_full = (read_volume(Path(ours_full_folder) / "segmentation.nii.gz").array
                     if (ours_full_folder := full_folders.get(full_key)) else None)
        for key in [key for key in timings if key.startswith("ours_")]:
            results[key]["dice_vs_truth"] = round(dice(masks[key], case.tumor.array)[0], 4)
        for key in [key for key in timings if key.startswith("monai_stock")]:
            walls, path = timings[key]
            theirs = read_volume(path).array
            results[key] = {
                "wall_s": round(min(walls), 2), "wall_s_all": [round(w, 2) for w in walls],
                "dice_vs_ours": round(dice(theirs, ours)[0], 4),
                "dice_vs_truth": round(dice(theirs, case.tumor.array)[0], 4),
                "speedup_ours": round(min(walls) / min(ours_walls), 2),
                # Same round, same state of the machine: the ratio a noisy machine distorts least.
                "speedup_ours_per_round": [round(w / o, 2) for w, o in zip(walls, ours_walls, strict=True)]}
            if ours_full is not None:  # like for like: ours on the whole image too
                full_walls = timings[full_key][0]
                results[key].update({
                    "dice_vs_ours_full_image": round(dice(theirs, ours_full)[0], 4),
                    "speedup_ours_full_image": round(min(walls) / min(full_walls), 2),
                    "speedup_ours_full_image_per_round": [round(w / o, 2) for w, o in
                                                          zip(walls, full_walls, strict=True)]})
    return write_results(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
