"""Liver Dice / volume of CT liver bundles on the real CTs, as hbseg segment runs the liver step (body box)."""
import sys, numpy as np
from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.preprocess.liver import liver_mask_from_model
from HepatoblastomaSegLib.preprocess.body_crop import body_box, crop_volume, paste
from HepatoblastomaSegLib.evaluate.metrics import dice
tumour = load_bundle("ct-demo")
ext = tuple(np.array(tumour.plans.patch_size_zyx) * np.array(tumour.plans.target_spacing_mm_xyz[::-1]))
D = "/tmp/realscans_data/"
cases = [("upper_abdomen", "reference_files_example_ct_sm.nii.gz", "reference_files_example_seg.nii.gz", 5),
         ("abdomen_pelvis", "tests_reference_files_example_ct.nii.gz", None, None),
         ("chest_cta", "models_ct_cropped.nii.gz", None, None)]
for name in sys.argv[1:]:
    b = load_bundle(name)
    for case, img, seg, lab in cases:
        vol = read_volume(D + img)
        box = body_box(vol, min_extent_mm_zyx=ext); w = crop_volume(vol, box) if box else vol
        p = liver_mask_from_model(w, b, checked=True).array
        p = (paste(p, box, vol.array.shape) if box else p) > 0
        ml = p.sum() * vol.voxel_volume_ml
        extra = ""
        if seg:
            t = read_volume(D + seg).array == lab
            extra = f" truth {t.sum()*vol.voxel_volume_ml:.0f} mL, Dice {float(dice(p, t)[0]):.3f}"
        print(f"{b.name} {b.version} {case}: liver {ml:.0f} mL{extra}")
