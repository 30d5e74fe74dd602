"""How evenly a liver is enhanced: the SD, inside the liver, of its attenuation smoothed with a Gaussian of 10 mm
(normalised convolution over the parenchyma: the liver eroded by 3 voxels in-plane, the tumour and 2 voxels around it
left out, and voxels more than 60 HU from the liver's median, vessels and fat, left out), with its 5th and 95th
percentiles around the median. Real livers (benchmarks/real_scans.md: IRCAD patient 17, the TotalSegmentator
30-slice CT and its portal-venous semi-synthetic version) against the first 4 held-out demo phantoms.

Run from the repository root: .venv/bin/python benchmarks/results/2026-12-05-scan-edge/liver_regional_variation.py
(the real files at the paths below, outside the repository)."""
import csv, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from liver_regional_variation import regional_variation as regional_sd  # benchmarks/liver_regional_variation.py
rows = []
rows.append(("ircadb1_17 (real, contrast)",) + regional_sd("/tmp/realtumour/ircadb1_17_ct.nii.gz", "/tmp/realtumour/ircadb1_17_liver.nii.gz", "/tmp/realtumour/ircadb1_17_tumor.nii.gz"))
rows.append(("ts 30 slices (real, unenhanced)",) + regional_sd("/tmp/realscans_data/reference_files_example_ct_sm.nii.gz", "/tmp/realscans_data/reference_files_example_seg.nii.gz", None, 5))
rows.append(("ts PV semi-synthetic control",) + regional_sd("/tmp/li/sm/pv_no_lesion.nii.gz", "/tmp/realscans_data/reference_files_example_seg.nii.gz", None, 5))
man = "demo_models_work/ct-heldout-full-s1001-n8/manifest.csv"  # from the repository root
for r in list(csv.DictReader(open(man)))[:4]:
    b = os.path.dirname(man)
    rows.append((r["case"] + " (phantom)",) + regional_sd(os.path.join(b, r["image"]), os.path.join(b, r["liver"]), os.path.join(b, r["tumor"])))
for r in rows: print(f"{r[0]:34s} liver median {r[1]:6.1f} HU, regional SD {r[2]:5.1f} HU, 5th/95th pct {r[3]:+6.1f}/{r[4]:+6.1f}")
