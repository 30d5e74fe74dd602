"""Mean Dice against the truth vs the tumour probability threshold, the liver anchor (a fifth inside) applied, from
stored probability maps (probe_probabilities.py of 2026-12-06-liver-anchor-fraction). usage: threshold_curve.py NPZROOT
TAG:MANIFEST ... (NPZROOT/TAG/CASE.npz)."""
import sys, csv
from pathlib import Path
import numpy as np
from HepatoblastomaSegLib.io import read_volume, read_mask
from HepatoblastomaSegLib.infer.postprocess import keep_components_in_liver
TS = (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)
root = Path(sys.argv[1])
for spec in sys.argv[2:]:
    tag, man = spec.split(":", 1); man = Path(man)
    rows = []
    for r in csv.DictReader(open(man)):
        f = root / tag / f"{r['case']}.npz"
        if not f.exists() or not r.get("tumor") or r["tumor"] == "none":
            continue
        z = np.load(f); p = z["p"]; liver = z["liver"]
        vol = read_volume(man.parent / r["image"])
        tt = np.asarray(read_mask(man.parent / r["tumor"], reference=vol).array) > 0
        ds = []
        for t in TS:
            m = (p > t * 250).astype(np.uint8)
            if liver is not None and liver.ndim == 3:
                m, _ = keep_components_in_liver(m, liver, min_fraction_inside=0.2)
            m = m > 0
            ds.append(2 * (m & tt).sum() / max(m.sum() + tt.sum(), 1))
        rows.append(ds)
    if rows:
        a = np.array(rows)
        print(f"{tag:10s} n={len(rows):2d} " + "  ".join(f"t{t}:{v:.3f}" for t, v in zip(TS, a.mean(0))))
