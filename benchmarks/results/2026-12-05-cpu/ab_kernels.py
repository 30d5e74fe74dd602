"""A/B: ct-demo's network with the fast CPU kernels vs torch's own, hbseg segment's predictor, no TTA, 2 threads."""
import json, sys, time
import numpy as np, torch
from torch import nn
torch.set_num_threads(2)
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.cpu_kernels import FastConv3d, FastInstanceNorm3d
image = read_volume(sys.argv[1])
p = Predictor.from_options(PredictorOptions(device="cpu", tta=False, liver_anchor=False, modality="ct"))
def set_plain(net, plain):
    for m in net.modules():
        if plain and type(m) is FastConv3d: m.__class__ = nn.Conv3d
        elif plain and type(m) is FastInstanceNorm3d: m.__class__ = nn.InstanceNorm3d
        elif not plain and type(m) is nn.Conv3d: m.__class__ = FastConv3d
        elif not plain and type(m) is nn.InstanceNorm3d: m.__class__ = FastInstanceNorm3d
out = {"fast": [], "plain": []}; masks = {}
p.predict(image)  # warm-up
for r in range(3):
    for kind in ("plain", "fast"):
        set_plain(p.network, kind == "plain")
        res = p.predict(image)
        out[kind].append(res.summary["seconds"]["network"]); masks[kind] = res.mask.array
out["mask_voxels_differing"] = int(np.count_nonzero(masks["fast"] != masks["plain"]))
out["image"] = sys.argv[1]
print(json.dumps(out))
