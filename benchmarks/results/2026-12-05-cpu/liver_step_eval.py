"""Liver Dice of the CT liver step as hbseg segment runs it: the liver bundle on the tumour model's body box."""
import sys, time
import numpy as np
from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.preprocess import read_manifest
from HepatoblastomaSegLib.preprocess.liver import liver_mask_from_model
from HepatoblastomaSegLib.preprocess.body_crop import body_box, crop_volume, paste
from HepatoblastomaSegLib.evaluate.metrics import dice
tumour = load_bundle("ct-demo")
ext = tuple(np.array(tumour.plans.patch_size_zyx) * np.array(tumour.plans.target_spacing_mm_xyz[::-1]))
cohort = sys.argv[1]
for name in sys.argv[2:]:
    b = load_bundle(name); ds = []; secs = []; outs = []
    for e in read_manifest(cohort):
        vol = read_volume(e.image); t = read_volume(e.tumor).array > 0; l = (read_volume(e.liver).array > 0) | t
        box = body_box(vol, min_extent_mm_zyx=ext); w = crop_volume(vol, box) if box else vol
        s = time.perf_counter(); p = liver_mask_from_model(w, b, checked=True).array; secs.append(time.perf_counter() - s)
        p = (paste(p, box, vol.array.shape) if box else p) > 0
        ds.append(float(dice(p, l)[0])); outs.append(float((t & ~p).sum() * vol.voxel_volume_ml))
    print(f"{b.name} {b.version}: liver Dice mean {np.mean(ds):.3f} [{', '.join(f'{d:.3f}' for d in ds)}]; "
          f"true tumour outside the liver mask mL [{', '.join(f'{o:.0f}' for o in outs)}]; s/case {np.mean(secs):.2f}")
