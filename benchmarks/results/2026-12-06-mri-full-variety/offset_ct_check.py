"""The HU+1024 check's new rule, measured: voxels between air and body per body voxel.

usage: offset_ct_check.py ct:FILE ... mri:FILE ...   (a CT is shifted by +1024 and stored as uint16 first, as a CT
whose rescale intercept was lost; an MRI is taken as it is). Prints, per image, the share of voxels in the body
range (>= 524), between air and body (101..523) and their ratio, and what looks_like_offset_ct says.
"""
import sys

import numpy as np

from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.preprocess.checks import looks_like_offset_ct

for spec in sys.argv[1:]:
    kind, path = spec.split(":", 1)
    volume = read_volume(path)
    if kind == "ct":
        volume = volume.with_array(np.clip(volume.array.astype(np.int32) + 1024, 0, 65535).astype(np.uint16))
    a = volume.array
    body = np.count_nonzero(a >= 524) / a.size
    between = np.count_nonzero((a > 100) & (a < 524)) / a.size
    print(f"{kind:3s} between/body {between / max(body, 1e-9):6.3f}  body {body:.3f}  between {between:.3f}  "
          f"offset CT: {looks_like_offset_ct(volume)!s:5s}  {path}", flush=True)
