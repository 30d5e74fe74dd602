"""Capture the tumour probability on the input grid for each CT row of a manifest and save it (uint8, p x 250) with
the run's mask and liver mask as OUTDIR/CASE.npz. A record of how the 2026-12-06 anchor figures were measured."""
import sys, csv, json
from pathlib import Path
import numpy as np, torch
import HepatoblastomaSegLib.infer.predictor as pm
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.io import read_volume, read_mask
from HepatoblastomaSegLib.preprocess.body_crop import paste

manifest, model, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
captured = {}
orig = pm.resample_to_original
def wrap(probs, prep):
    r = orig(probs, prep)
    captured["p"] = (r if isinstance(r, torch.Tensor) else torch.from_numpy(r))[0].clamp(0, 1).cpu().numpy()
    return r
pm.resample_to_original = wrap
torch.set_num_threads(2)
pred = Predictor.from_options(PredictorOptions(model=model, liver_model="ct-liver-demo"), modality="ct")
for row in csv.DictReader(open(manifest)):
    if row.get("modality", "ct") not in ("ct", ""):
        continue
    name = row["case"]
    if (out / f"{name}.npz").exists():
        continue
    vol = read_volume(manifest.parent / row["image"])
    res = pred.predict(vol)
    p = captured["p"]
    box = pred.body_box(vol)
    if box is not None:
        p = paste(p, box, vol.array.shape)
    liver = res.review_masks.get("liver")
    np.savez_compressed(out / f"{name}.npz", p=np.round(p * 250).astype(np.uint8),
                        mask=np.asarray(res.mask.array, np.uint8),
                        liver=None if liver is None else np.asarray(liver.array, np.uint8))
    print(name, res.summary["tumor_volume_ml"], flush=True)
