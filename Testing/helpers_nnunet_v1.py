"""Helpers for tests that check our planner against the real nnU-Net 1.7.1 package (``nnunet``, a test extra).

nnU-Net v1 reads its folders from environment variables when ``nnunet.paths`` is first imported; :func:`nnunet_env`
points them at a temporary folder before that happens. Its full planning pipeline (crop, dataset analysis, planner)
runs in a subprocess (:func:`run_nnunet_v1_planner`), so each test gets its own folders and no state leaks between
tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

NNUNET_ENV_VARS = ("nnUNet_raw_data_base", "nnUNet_preprocessed", "RESULTS_FOLDER")


def nnunet_env(base: str | Path | None = None) -> dict[str, str]:
    """Set nnU-Net v1's three folder variables (to temporary folders unless set) and return them."""
    base = Path(base or tempfile.mkdtemp(prefix="nnunet_v1_"))
    env = {}
    for name in NNUNET_ENV_VARS:
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = os.environ.setdefault(name, str(folder))
    return env


def v21_planner_self() -> types.SimpleNamespace:
    """The attributes ``ExperimentPlanner3D_v21.get_properties_for_stage`` reads, at their 1.7.1 defaults."""
    return types.SimpleNamespace(unet_featuremap_min_edge_length=4, unet_max_numpool=999, unet_base_num_features=32,
                                 unet_max_num_filters=320, conv_per_stage=2,
                                 batch_size_covers_max_percent_of_dataset=0.05, unet_min_batch_size=2,
                                 anisotropy_threshold=3)


def random_spacings_and_shapes(seed: int, count: int):
    """``count`` random (spacing_zyx, shape_zyx) pairs: slices 0.5-6 mm, in-plane 0.3-2 mm, edges 5-600 voxels."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        spacing = [float(rng.uniform(0.3, 6.0)), float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.3, 2.0))]
        rng.shuffle(spacing)
        yield spacing, [int(v) for v in rng.integers(5, 600, 3)]


_PLANNER_SCRIPT = r"""
import json, sys
from nnunet.experiment_planning.utils import crop
from nnunet.experiment_planning.DatasetAnalyzer import DatasetAnalyzer
from nnunet.experiment_planning.experiment_planner_baseline_3DUNet_v21 import ExperimentPlanner3D_v21
from nnunet.paths import nnUNet_cropped_data, preprocessing_output_dir
from batchgenerators.utilities.file_and_folder_operations import join, load_pickle, maybe_mkdir_p
task = sys.argv[1]
crop(task, False, 1)
cropped = join(nnUNet_cropped_data, task)
DatasetAnalyzer(cropped, overwrite=False, num_processes=1).analyze_dataset()
out = join(preprocessing_output_dir, task)
maybe_mkdir_p(out)
planner = ExperimentPlanner3D_v21(cropped, out)
planner.plan_experiment()
plans = load_pickle(planner.plans_fname)
def plain(v):
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "tolist"):
        return plain(v.tolist())
    return v
keep = {k: plans[k] for k in ("num_stages", "plans_per_stage", "transpose_forward", "normalization_schemes",
                              "use_mask_for_norm", "num_classes")}
keep["intensityproperties"] = {m: {k: v for k, v in p.items() if k != "local_props"}
                               for m, p in plans["dataset_properties"]["intensityproperties"].items()}
keep["all_sizes"] = plans["dataset_properties"]["all_sizes"]
keep["all_spacings"] = plans["dataset_properties"]["all_spacings"]
print("PLANS_JSON " + json.dumps(plain(keep)))
"""


def run_nnunet_v1_planner(raw_base: Path, task: str, workdir: Path) -> dict:
    """Run nnU-Net 1.7.1's crop + dataset analysis + ``ExperimentPlanner3D_v21`` on ``raw_base/nnUNet_raw_data/task``.

    Returns the plans' essentials as plain JSON (3d_fullres is ``plans_per_stage[num_stages - 1]``).
    """
    env = dict(os.environ)
    env.update({"nnUNet_raw_data_base": str(raw_base), "nnUNet_preprocessed": str(workdir / "preprocessed"),
                "RESULTS_FOLDER": str(workdir / "results"), "OMP_NUM_THREADS": "1"})
    done = subprocess.run([sys.executable, "-c", _PLANNER_SCRIPT, task], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net planner failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("PLANS_JSON ")][-1]
    return json.loads(line[len("PLANS_JSON "):])


def write_nnunet_v1_task(phantom_dir: Path, raw_base: Path, task: str, modality: str) -> Path:
    """Copy a phantom dataset into nnU-Net v1's raw layout as the paper would have fed it: CT windowed to 0-350 HU
    (int16), MRI as generated; ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` (the tumour mask)."""
    import SimpleITK as sitk

    from HepatoblastomaSegLib.preprocess import read_manifest

    folder = raw_base / "nnUNet_raw_data" / task
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for entry in read_manifest(phantom_dir):
        image = sitk.ReadImage(str(entry.image))
        if modality == "ct":
            image = sitk.Cast(sitk.Clamp(image, sitk.sitkInt16, 0, 350), sitk.sitkInt16)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{entry.case}_0000.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(entry.tumor)), str(folder / "labelsTr" / f"{entry.case}.nii.gz"))
        training.append({"image": f"./imagesTr/{entry.case}.nii.gz", "label": f"./labelsTr/{entry.case}.nii.gz"})
    dataset = {"name": task, "tensorImageSize": "3D", "modality": {"0": "CT" if modality == "ct" else "MRI"},
               "labels": {"0": "background", "1": "tumor"}, "numTraining": len(training), "numTest": 0,
               "training": training, "test": []}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return folder


def v21_plan_experiment(spacings_zyx, sizes_zyx, modality: str = "CT") -> dict:
    """``ExperimentPlanner3D_v21.plan_experiment`` on given per-case spacings and cropped sizes (z, y, x), without
    files: the planner object gets the dataset properties its analysis would have written."""
    from nnunet.experiment_planning.experiment_planner_baseline_3DUNet_v21 import ExperimentPlanner3D_v21

    planner = ExperimentPlanner3D_v21.__new__(ExperimentPlanner3D_v21)
    for key, value in vars(v21_planner_self()).items():
        setattr(planner, key, value)
    planner.target_spacing_percentile = 50
    planner.how_much_of_a_patient_must_the_network_see_at_stage0 = 4
    planner.data_identifier, planner.preprocessed_output_folder = "x", "x"
    planner.preprocessor_name = "GenericPreprocessor"
    planner.list_of_cropped_npz_files = [f"case{i}.npz" for i in range(len(spacings_zyx))]
    planner.dataset_properties = {"all_spacings": [np.asarray(s, float) for s in spacings_zyx],
                                  "all_sizes": [tuple(int(v) for v in s) for s in sizes_zyx],
                                  "all_classes": [1], "modalities": {0: modality}, "intensityproperties": None}
    planner.determine_whether_to_use_mask_for_norm = lambda: {0: False}
    planner.save_my_plans = lambda: None
    planner.plan_experiment()
    return planner.plans
