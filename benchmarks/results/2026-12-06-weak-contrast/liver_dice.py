"""Liver Dice of a CT liver bundle as the pipeline runs it (body crop, pieces beside the largest, mirror padding).
usage: liver_eval.py MANIFEST MODEL [MODEL2 ...]"""
import sys, csv
from pathlib import Path
import numpy as np, torch
from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.io import read_volume, read_mask
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions, LIVER_PIECE_MIN_ML
from HepatoblastomaSegLib.preprocess.body_crop import crop_volume, paste
from HepatoblastomaSegLib.preprocess.liver import liver_mask_from_model
torch.set_num_threads(2)
man = Path(sys.argv[1]); models = sys.argv[2:]
pred = Predictor.from_options(PredictorOptions(modality="ct", tta=False))
bundles = [load_bundle(m, modality="ct") for m in models]
for r in csv.DictReader(open(man)):
    if r.get("modality", "ct") not in ("ct", "") or not r.get("liver"):
        continue
    vol = read_volume(man.parent / r["image"])
    lp = Path(r["liver"]); lp = lp if lp.is_absolute() else man.parent / lp
    lv = read_volume(lp)
    if not lv.geometry.matches(vol.geometry):
        print(r["case"], "liver mask not on the image grid"); continue
    a = np.asarray(lv.array); truth = (a == int(r["liver_label"])) if r.get("liver_label") else a > 0
    box = pred.body_box(vol); work = vol if box is None else crop_volume(vol, box)
    out = [f"{r['case'][:22]:22s} truth {truth.sum()*vol.voxel_volume_ml:7.0f} mL"]
    for m, b in zip(models, bundles):
        liv = liver_mask_from_model(work, b, device="cpu", checked=True, min_piece_ml=LIVER_PIECE_MIN_ML, pad_mode="mirror").array
        if box is not None:
            liv = paste(liv, box, vol.array.shape)
        liv = liv > 0
        d = 2 * (liv & truth).sum() / (liv.sum() + truth.sum())
        out.append(f"{Path(m).name}: Dice {d:.3f} {liv.sum()*vol.voxel_volume_ml:6.0f} mL (outside {(liv&~truth).sum()*vol.voxel_volume_ml:5.0f})")
    print("  ".join(out), flush=True)
