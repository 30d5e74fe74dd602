"""Per component of p>0.5: mL, share inside the model's liver, share of it that is true tumour. usage: comp.py MANIFEST NPZDIR"""
import sys, csv
from pathlib import Path
import numpy as np
from scipy import ndimage as ndi
from HepatoblastomaSegLib.io import read_volume, read_mask
man = Path(sys.argv[1]); d = Path(sys.argv[2])
S = np.ones((3, 3, 3), bool)
for r in csv.DictReader(open(man)):
    f = d / f"{r['case']}.npz"
    if not f.exists():
        continue
    z = np.load(f, allow_pickle=True)
    p = z["p"] > 125; liver = z["liver"] > 0
    vol = read_volume(man.parent / r["image"]); ml = vol.voxel_volume_ml
    truth = None
    if r.get("tumor") and r["tumor"] != "none":
        truth = np.asarray(read_mask(man.parent / r["tumor"], reference=vol).array) > 0
    lab, n = ndi.label(p, structure=S)
    if n == 0:
        print(r["case"], "nothing"); continue
    size = np.bincount(lab.ravel())[1:]
    inl = np.bincount(lab[liver], minlength=n + 1)[1:]
    near = ndi.binary_dilation(liver, structure=S)
    touch = np.bincount(lab[near], minlength=n + 1)[1:] > 0
    tt = np.bincount(lab[truth], minlength=n + 1)[1:] if truth is not None else np.zeros(n)
    for i in np.argsort(-size)[:6]:
        if size[i] * ml < 0.5:
            continue
        print(f"{r['case'][:22]:22s} {size[i]*ml:8.1f} mL  in-liver {inl[i]/size[i]:.2f}  touches {int(touch[i])}  true {tt[i]/size[i]:.2f}"
              + (f"  (truth in liver {(truth&liver).sum()/max(truth.sum(),1):.2f})" if truth is not None else ""))
