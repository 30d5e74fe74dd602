"""How evenly a liver is enhanced: the SD, inside the liver, of its attenuation smoothed with a Gaussian of 10 mm
(normalised convolution over the parenchyma: the liver eroded by 3 voxels in-plane, the tumour and 2 voxels around it
left out, and voxels more than 60 HU from the liver's median, vessels and fat, left out), with its 5th and 95th
percentiles around the median. Real livers (benchmarks/real_scans.md: IRCAD patient 17, the TotalSegmentator
30-slice CT and its portal-venous semi-synthetic version) against the first 4 held-out demo phantoms.

Run from the repository root: .venv/bin/python benchmarks/results/2026-12-05-scan-edge/liver_regional_variation.py
(the real files at the paths below, outside the repository)."""
import sys, csv, os, numpy as np, SimpleITK as sitk
from scipy import ndimage
def regional_sd(img_path, liver_path, tumor_path=None, liver_label=None, sigma_mm=10.0):
    im = sitk.ReadImage(img_path); a = sitk.GetArrayFromImage(im).astype(np.float32)
    sp = np.array(im.GetSpacing())[::-1]
    L = sitk.GetArrayFromImage(sitk.ReadImage(liver_path))
    liver = (L == liver_label) if liver_label else L > 0
    if tumor_path:
        t = sitk.GetArrayFromImage(sitk.ReadImage(tumor_path)) > 0
        liver &= ~ndimage.binary_dilation(t, iterations=2)
    med = np.median(a[liver])
    inner = ndimage.binary_erosion(liver, structure=np.ones((1, 3, 3)), iterations=3)
    par = inner & (np.abs(a - med) < 60)  # leave out vessels and fat
    s = sigma_mm / sp
    num = ndimage.gaussian_filter(np.where(par, a, 0), s); den = ndimage.gaussian_filter(par.astype(np.float32), s)
    sm = num / np.maximum(den, 1e-3)
    v = sm[par & (den > 0.4)]
    return med, float(np.std(v)), float(np.percentile(v, 5) - med), float(np.percentile(v, 95) - med)
rows = []
rows.append(("ircadb1_17 (real, contrast)",) + regional_sd("/tmp/realtumour/ircadb1_17_ct.nii.gz", "/tmp/realtumour/ircadb1_17_liver.nii.gz", "/tmp/realtumour/ircadb1_17_tumor.nii.gz"))
rows.append(("ts 30 slices (real, unenhanced)",) + regional_sd("/tmp/realscans_data/reference_files_example_ct_sm.nii.gz", "/tmp/realscans_data/reference_files_example_seg.nii.gz", None, 5))
rows.append(("ts PV semi-synthetic control",) + regional_sd("/tmp/li/sm/pv_no_lesion.nii.gz", "/tmp/realscans_data/reference_files_example_seg.nii.gz", None, 5))
man = "demo_models_work/ct-heldout-full-s1001-n8/manifest.csv"  # from the repository root
for r in list(csv.DictReader(open(man)))[:4]:
    b = os.path.dirname(man)
    rows.append((r["case"] + " (phantom)",) + regional_sd(os.path.join(b, r["image"]), os.path.join(b, r["liver"]), os.path.join(b, r["tumor"])))
for r in rows: print(f"{r[0]:34s} liver median {r[1]:6.1f} HU, regional SD {r[2]:5.1f} HU, 5th/95th pct {r[3]:+6.1f}/{r[4]:+6.1f}")
