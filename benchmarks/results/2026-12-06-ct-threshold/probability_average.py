"""Offline: the average of two models' stored tumour probabilities (weight w of the first), thresholded at t, the
liver anchor (a fifth inside, the second run's liver mask) applied, on the two real tumour CTs (paths as on the
machine that ran it; the scans are not in the repository). usage: probability_average.py NPZROOT_A NPZROOT_B"""
import sys, csv
from pathlib import Path
import numpy as np, SimpleITK as sitk
from HepatoblastomaSegLib.infer.postprocess import keep_components_in_liver
IRCAD, CRLM = "/tmp/realtumour/ircadb1_17", "/tmp/crlm/crlm"
cases = {"ircad": (f"{IRCAD}_ct.nii.gz", f"{IRCAD}_tumor.nii.gz", f"{IRCAD}_liver.nii.gz", "ircadb1_17"),
         "crlm": (f"{CRLM}_ct.nii.gz", f"{CRLM}_tumor.nii.gz", f"{CRLM}_liver.nii.gz", "crlm_lossy")}
A, B = sys.argv[1], sys.argv[2]
for key, (im, tu, li, name) in cases.items():
    img = sitk.ReadImage(im); vml = np.prod(img.GetSpacing()) / 1000
    tt = sitk.GetArrayFromImage(sitk.ReadImage(tu)) > 0; tl = sitk.GetArrayFromImage(sitk.ReadImage(li)) > 0
    za, zb = np.load(f"{A}/{key}/{name}.npz"), np.load(f"{B}/{key}/{name}.npz")
    pa = za["p"] / 250.; pb = zb["p"] / 250.; liver = zb["liver"] > 0
    for w in (0.0, 0.5, 1.0):
        p = w * pa + (1 - w) * pb
        for t in (0.5, 0.6):
            m, _ = keep_components_in_liver((p > t).astype(np.uint8), liver.astype(np.uint8),
                                            min_fraction_inside=0.2)
            m = m > 0
            d = 2 * (m & tt).sum() / (m.sum() + tt.sum())
            print(f"{key:6s} w_a={w:.1f} t={t}: {m.sum()*vml:6.1f} mL (truth {tt.sum()*vml:.0f}) Dice {d:.3f} "
                  f"found {(m&tt).sum()/tt.sum():.2f} out-true-liver {(m&~tl&~tt).sum()*vml:5.1f}")
