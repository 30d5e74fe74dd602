"""Section 3 of README.md: the real 30-slice CT as it is and with 16 copies of its end slices added (no TTA).

Run from the repository root with PYTHONPATH=$PWD; the scan and its label map as in benchmarks/real_scans.md."""
import sys, numpy as np, torch, SimpleITK as sitk
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.io import read_volume, read_mask
torch.set_num_threads(1)
img_path = "/tmp/realscans_data/reference_files_example_ct_sm.nii.gz"
seg = sitk.GetArrayFromImage(sitk.ReadImage("/tmp/realscans_data/reference_files_example_seg.nii.gz")) == 5
for model in ["ct-demo", "demo_models_work_ft/ct-demo-lr2e3"]:
    pred = Predictor.from_options(PredictorOptions(model=model, liver_model="ct-liver-demo", device="cpu", tta=False), modality="ct")
    for pad in [0, 16]:
        itk = sitk.ReadImage(img_path)
        if pad:
            arr = sitk.GetArrayFromImage(sitk.ReadImage(img_path))
            arr = np.pad(arr, ((pad, pad), (0, 0), (0, 0)), mode="edge")
            new = sitk.GetImageFromArray(arr); new.SetSpacing(itk.GetSpacing()); new.SetDirection(itk.GetDirection())
            o = np.array(itk.GetOrigin()) - pad * np.array(itk.GetDirection()).reshape(3, 3)[:, 2] * itk.GetSpacing()[2]
            new.SetOrigin(tuple(o)); itk = new
        sitk.WriteImage(itk, "/tmp/ft2/pad.nii.gz")
        vol = read_volume("/tmp/ft2/pad.nii.gz")
        p = pred.predict(vol)
        m = p.mask.array > 0
        if pad: m = m[pad:-pad]
        ml = vol.voxel_volume_ml
        print(model, "edge-pad", pad, "tumour mL", round(m.sum() * ml, 1), "outside true liver", round((m & ~seg).sum() * ml, 1), flush=True)
