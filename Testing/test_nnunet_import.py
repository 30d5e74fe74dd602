"""Imported nnU-Net models against the real packages (nnunetv2 and nnunet 1.7.1): same softmax, same masks.

Each test builds a tiny nnU-Net result folder with nnU-Net's own network builder and checkpoint layout
(:mod:`helpers_nnunet`), runs nnU-Net's own predictor (v2: ``nnUNetPredictor``; v1: ``predict_cases``) on a small
anisotropic phantom, imports the folder with ``hbseg import nnunet`` and compares.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("nnunetv2")

from HepatoblastomaSegLib.bundle import load_bundle  # noqa: E402
from HepatoblastomaSegLib.cli import main  # noqa: E402
from HepatoblastomaSegLib.errors import ModelError  # noqa: E402
from HepatoblastomaSegLib.infer.nnunet import NnUNetEngine  # noqa: E402
from HepatoblastomaSegLib.infer.uncertainty import entropy_nats  # noqa: E402
from HepatoblastomaSegLib.importers.nnunet import import_nnunet  # noqa: E402
from HepatoblastomaSegLib.safe_pickle import load_torch_checkpoint  # noqa: E402
from helpers_nnunet import (dice, make_v1_folder, make_v2_folder, nnunet_v1_predict, nnunet_v2_predict,  # noqa: E402
                            phantom_image)
from helpers_pickles import PAYLOADS  # noqa: E402
from helpers_torch import one_thread  # noqa: F401 (autouse fixture: one torch thread per test)

# Building folders and running nnU-Net's predictors takes 5-40 s per test on the shared 2-core machine.
pytestmark = pytest.mark.slow
PLAN = {"patch": (8, 16, 16), "spacing_zyx": (10.0, 4.0, 4.0)}
TUMOR = 2




@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    return make_v2_folder(tmp_path_factory.mktemp("nnunet_ct"), modality="ct", folds=(0, 1), **PLAN)


@pytest.fixture(scope="module")
def mri_folder(tmp_path_factory):
    # the checkpoint allows mirroring in-plane only: that must be honoured
    return make_v2_folder(tmp_path_factory.mktemp("nnunet_mri"), modality="mri", folds=(0, 1), mirror_axes=(1, 2),
                          seed=5, **PLAN)


def _compare(folder, tmp_path, modality, *, folds, mirror):
    image, spacing = phantom_image(modality)
    seg, probs = nnunet_v2_predict(folder, image, spacing, folds=folds, mirror=mirror)
    bundle = import_nnunet(folder, tmp_path / "bundle", folds=",".join(map(str, folds)))
    engine = NnUNetEngine(load_bundle(bundle))
    assert not engine.fast_kernels  # v2 (float16 sums): nnU-Net's own kernels by default
    ours = engine.probabilities(image[None], spacing, mirror=mirror)
    assert ours.shape == probs.shape
    assert np.abs(ours - probs).max() < 1e-3
    for label in (1, 2):
        assert dice(ours.argmax(0) == label, seg == label) >= 0.999
    # a test that can fail: every label occurs, and the folds/mirroring change the result
    assert min(np.bincount(seg.ravel(), minlength=3)) > 0
    return ours, probs


@pytest.mark.parametrize("mirror", [False, True])
def test_v2_one_fold_ct_matches_nnunet(ct_folder, tmp_path, mirror):
    _compare(ct_folder, tmp_path, "ct", folds=(0,), mirror=mirror)


def test_v2_two_fold_ensemble_mri_matches_nnunet(mri_folder, tmp_path):
    # MRI: z-score inside the nonzero region, crop to the nonzero region, mirroring in-plane only
    ours, _ = _compare(mri_folder, tmp_path, "mri", folds=(0, 1), mirror=True)
    single = NnUNetEngine(load_bundle(import_nnunet(mri_folder, tmp_path / "fold0", folds="0")))
    image, spacing = phantom_image("mri")
    assert np.abs(single.probabilities(image[None], spacing) - ours).max() > 1e-2  # the ensemble is not one fold


def test_hbseg_segment_on_imported_bundle_gives_nnunets_mask(ct_folder, tmp_path):
    image, spacing = phantom_image("ct")
    seg, probs = nnunet_v2_predict(ct_folder, image, spacing, folds=(0, 1), mirror=True)
    itk = sitk.GetImageFromArray(image.astype(np.int16))
    itk.SetSpacing(spacing[::-1])
    sitk.WriteImage(itk, str(tmp_path / "scan.nii.gz"))
    assert main(["import", "nnunet", str(ct_folder), "-o", str(tmp_path / "bundle")]) == 0
    assert main(["segment", str(tmp_path / "scan.nii.gz"), "--model", str(tmp_path / "bundle"), "--device", "cpu",
                 "--modality", "ct",
                 "-o", str(tmp_path / "out"), "--progress", "none"]) == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "segmentation.nii.gz")))
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "entropy.nii.gz")))
    assert dice(mask, seg == TUMOR) >= 0.999
    p = torch.from_numpy(probs[TUMOR].astype(np.float32))
    assert np.abs(entropy - entropy_nats(torch.stack((1 - p, p))).numpy()).max() < 2e-3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["nnunet"]["folds"] == ["fold_0", "fold_1"] and summary["nnunet"]["mirror_axes"] == [0, 1, 2]
    assert summary["sliding_windows"] == 8  # 2 x 2 x 2 windows of 8x16x16 on the 10x21x21 resampled image
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["nnunet"]["source"]["trainer"] == "nnUNetTrainer" and meta["labels"][2]["name"] == "tumor"


def test_import_refuses_checkpoint_with_payload(ct_folder, tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("plans.json", "dataset.json"):
        (folder / name).write_bytes((ct_folder / name).read_bytes())
    (folder / "fold_0").mkdir()
    checkpoint = load_torch_checkpoint(ct_folder / "fold_0" / "checkpoint_final.pth")
    checkpoint["logging"] = {"train_losses": PAYLOADS["os.system"](marker)}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    assert main(["import", "nnunet", str(folder), "-o", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_final.pth" in err and ("posix.system" in err or "os.system" in err)
    assert not marker.exists() and not (tmp_path / "bundle").exists()


def test_tampered_nnunet_plans_are_refused(ct_folder, tmp_path):
    bundle = import_nnunet(ct_folder, tmp_path / "bundle", folds="0")
    (bundle / "nnunet_plans.json").write_text("{}")
    with pytest.raises(ModelError, match="nnunet_plans.json"):
        NnUNetEngine(load_bundle(bundle))


def test_import_refuses_existing_output_and_unknown_fold(ct_folder, tmp_path):
    (tmp_path / "exists").mkdir()
    assert main(["import", "nnunet", str(ct_folder), "-o", str(tmp_path / "exists")]) == 2
    assert main(["import", "nnunet", str(ct_folder), "-o", str(tmp_path / "b"), "--folds", "3"]) == 2
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ nnU-Net v1
@pytest.fixture(scope="module")
def v1_ct_folder(tmp_path_factory):
    pytest.importorskip("nnunet")
    return make_v1_folder(tmp_path_factory.mktemp("nnunet1_ct"), modality="ct", folds=(0, 1), **PLAN)


@pytest.fixture(scope="module")
def v1_mri_folder(tmp_path_factory):
    pytest.importorskip("nnunet")
    return make_v1_folder(tmp_path_factory.mktemp("nnunet1_mri"), modality="mri", folds=(0, 1), seed=3, **PLAN)


def test_v2_fast_kernels_stay_within_one_float16_step_of_nnunet(ct_folder, tmp_path):
    """``kernels="fast"`` on a v2 model: float32 rounding differences can move nnU-Net v2's float16 sums across a
    rounding step; the softmax then differs by up to one float16 step of the logits, the masks stay nnU-Net's."""
    image, spacing = phantom_image("ct")
    seg, probs = nnunet_v2_predict(ct_folder, image, spacing, folds=(0,), mirror=True)
    bundle = load_bundle(import_nnunet(ct_folder, tmp_path / "bundle", folds="0"))
    fast = NnUNetEngine(bundle, kernels="fast")
    assert fast.fast_kernels
    ours = fast.probabilities(image[None], spacing, mirror=True)
    assert np.abs(ours - probs).max() < 5e-3
    for label in (1, 2):
        assert dice(ours.argmax(0) == label, seg == label) >= 0.999


def _compare_v1(folder, tmp_path, modality, *, folds, mirror):
    image, spacing = phantom_image(modality)
    seg, probs = nnunet_v1_predict(folder, image, spacing, tmp_path / "v1", folds=folds, mirror=mirror)
    bundle = import_nnunet(folder, tmp_path / "bundle", folds=",".join(map(str, folds)), tumor_label="2")
    engine = NnUNetEngine(load_bundle(bundle))
    assert engine.fast_kernels  # v1 (float32 sums): the fast CPU kernels by default
    ours = engine.probabilities(image[None], spacing, mirror=mirror)
    # nnU-Net v1 stores its softmax as float16 (steps of 2^-11 below 1)
    assert np.abs(ours - probs).max() < 1e-3
    for label in (1, 2):
        assert dice(ours.argmax(0) == label, seg == label) >= 0.999
    assert min(np.bincount(seg.ravel(), minlength=3)) > 0


@pytest.mark.parametrize("mirror", [False, True])
def test_v1_one_fold_ct_matches_nnunet(v1_ct_folder, tmp_path, mirror):
    _compare_v1(v1_ct_folder, tmp_path, "ct", folds=(0,), mirror=mirror)


def test_v1_two_fold_ensemble_mri_matches_nnunet(v1_mri_folder, tmp_path):
    # nonCT z-score inside the nonzero mask, which v1 resamples with the image, and zero outside it
    _compare_v1(v1_mri_folder, tmp_path, "mri", folds=(0, 1), mirror=True)


def test_v1_plans_pickle_with_payload_is_refused(v1_ct_folder, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "fold_0").mkdir()
    for name in ("fold_0/model_final_checkpoint.model", "fold_0/model_final_checkpoint.model.pkl"):
        (folder / name).write_bytes((v1_ct_folder / name).read_bytes())
    marker = tmp_path / "ran"
    (folder / "plans.pkl").write_bytes(pickle.dumps({"plans_per_stage": PAYLOADS["builtins.eval"](marker)}))
    with pytest.raises(ModelError, match="builtins.eval"):
        import_nnunet(folder, tmp_path / "bundle")
    assert not marker.exists() and not (tmp_path / "bundle").exists()
