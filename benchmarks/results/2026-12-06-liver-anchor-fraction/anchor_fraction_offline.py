"""Offline: the anchor at fraction 0 (as stored) vs F on probe npz files. usage: anchor_eval.py MANIFEST NPZDIR [F]"""
import sys, csv
from pathlib import Path
import numpy as np
from HepatoblastomaSegLib.io import read_volume, read_mask
from HepatoblastomaSegLib.infer.postprocess import keep_components_in_liver
man = Path(sys.argv[1]); d = Path(sys.argv[2]); F = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
for r in csv.DictReader(open(man)):
    f = d / f"{r['case']}.npz"
    if not f.exists():
        continue
    z = np.load(f, allow_pickle=True)
    raw = (z["p"] > 125).astype(np.uint8); liver = z["liver"]
    vol = read_volume(man.parent / r["image"]); ml = vol.voxel_volume_ml
    m0, d0 = keep_components_in_liver(raw, liver, min_fraction_inside=0.0)
    m2, d2 = keep_components_in_liver(raw, liver, min_fraction_inside=F)
    same_as_stored = np.array_equal(m0, z["mask"])
    truth = None
    if r.get("tumor") and r["tumor"] != "none":
        truth = np.asarray(read_mask(man.parent / r["tumor"], reference=vol).array) > 0
    tl = None
    if r.get("liver"):
        lp = Path(r["liver"]); lp = lp if lp.is_absolute() else man.parent / lp
        lv = read_volume(lp)
        if lv.geometry.matches(vol.geometry):
            a = np.asarray(lv.array); tl = (a == int(r["liver_label"])) if r.get("liver_label") else a > 0
    def desc(m):
        m = m > 0; s = f"{m.sum()*ml:7.1f} mL"
        if truth is not None:
            s += f" Dice {2*(m&truth).sum()/(m.sum()+truth.sum()):.3f}"
        if tl is not None:
            s += f" out-true-liver {(m&~tl).sum()*ml:6.1f}"
        s += f" out-model-liver {(m&~(liver>0)).sum()*ml:6.1f}"
        return s
    changed = "" if np.array_equal(m0, m2) else "  CHANGED"
    print(f"{r['case'][:20]:20s} stored-match {same_as_stored}  f0: {desc(m0)} | f{F}: {desc(m2)}{changed}", flush=True)
