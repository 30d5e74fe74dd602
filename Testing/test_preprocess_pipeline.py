"""End to end on small synthetic datasets on disk: planning, preprocessing one image, the way back to the original
grid, the on-disk cache, the ``hbseg plan`` command, and MRI liver masks (given, from a liver bundle, fallback)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HepatoblastomaSegLib.bundle import save_bundle
from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import GeometryError, InputError
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_volume
from HepatoblastomaSegLib.network import build_network
from HepatoblastomaSegLib.preprocess import (
    Plans,
    PreprocessedCache,
    choose_target_spacing,
    labels_on_original,
    plan_dataset,
    preprocess_image,
    read_manifest,
    resample_mask_to_target,
    resample_to_original,
)

from conftest import oblique_direction
from helpers_synthetic import synthetic_case, write_dataset


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory):
    spacings = [(1.6, 1.5, 4.0), (1.4, 1.4, 4.0), (1.5, 1.5, 5.0)]
    return write_dataset(tmp_path_factory.mktemp("ct"), "ct", n_cases=3, spacings=spacings)


@pytest.fixture(scope="module")
def ct_plans(ct_dataset):
    return plan_dataset(ct_dataset, "ct")


@pytest.fixture(scope="module")
def mri_plans(tmp_path_factory):
    return plan_dataset(write_dataset(tmp_path_factory.mktemp("mri"), "mri", n_cases=3), "mri")


# ----------------------------------------------------------------------------------------------------- planning
def test_ct_plan_from_dataset(ct_dataset, ct_plans):
    assert ct_plans.modality == "ct" and ct_plans.labels == {"background": 0, "tumor": 1}
    assert ct_plans.target_spacing_mm_xyz == (1.5, 1.5, 4.0)  # per-axis median
    entries = read_manifest(ct_dataset)
    pooled = np.concatenate([np.clip(read_volume(e.image).array[read_volume(e.tumor).array > 0], 0, 350)
                             for e in entries]).astype(float)
    assert ct_plans.ct.mean_hu == pytest.approx(pooled.mean(), rel=1e-6)
    assert ct_plans.ct.std_hu == pytest.approx(pooled.std(), rel=1e-6)
    assert ct_plans.ct.clip_hu == pytest.approx(tuple(np.percentile(pooled, [0.5, 99.5])))
    assert set(ct_plans.versions) >= {"HepatoblastomaSeg", "monai", "torch"}
    assert ct_plans.dataset.cases == ("case00", "case01", "case02")
    assert Plans.from_dict(ct_plans.to_dict()) == ct_plans


def test_spacing_rules_median_vs_nnunet_percentile10():
    # Mostly 5 mm slices with a few 2.5 mm ones, 512x512 in-plane: nnU-Net's condition holds.
    spacings = np.array([[0.7, 0.7, 5.0]] * 8 + [[0.7, 0.7, 2.5]] * 2)
    sizes = np.array([[512, 512, 60]] * 8 + [[512, 512, 120]] * 2)
    median = choose_target_spacing(spacings, sizes, "median")
    p10 = choose_target_spacing(spacings, sizes, "percentile10")
    assert median.target_spacing_mm_xyz == (0.7, 0.7, 5.0) and median.nnunet_rule_applies
    assert p10.target_spacing_mm_xyz == (0.7, 0.7, 2.5) and p10.percentile10_coarse_axis_mm == 2.5
    # Isotropic data: the rule does not apply, both give the median.
    iso = choose_target_spacing(np.array([[1.0, 1.0, 1.2]] * 3), np.array([[200, 200, 180]] * 3), "percentile10")
    assert iso.target_spacing_mm_xyz == (1.0, 1.0, 1.2) and not iso.nnunet_rule_applies


def test_mri_plan_learns_nyul_on_livers(mri_plans):
    nyul = mri_plans.mri.nyul
    assert nyul.mask_source == "liver" and len(nyul.percentiles) == 11
    assert nyul.standard_landmarks[0] == 0 and nyul.standard_landmarks[-1] == pytest.approx(100)


def test_manifest_problems_name_the_line_and_file(tmp_path):
    folder = write_dataset(tmp_path / "ds", "ct", n_cases=2, with_liver=False)
    manifest = folder / "manifest.csv"
    text = manifest.read_text()
    manifest.write_text(text.replace("case01/image.nii.gz", "case01/missing.nii.gz"))
    with pytest.raises(InputError, match=r"line 3 \(case case01\): image file not found"):
        read_manifest(folder)
    manifest.write_text("case,image\nx,y\n")
    with pytest.raises(InputError, match="lacks the column"):
        read_manifest(folder)
    manifest.write_text(text + text.splitlines()[1] + "\n")
    with pytest.raises(InputError, match="listed twice"):
        read_manifest(folder)
    with pytest.raises(InputError, match="no manifest.csv"):
        read_manifest(tmp_path)


def test_planning_refuses_the_wrong_modality(tmp_path):
    folder = write_dataset(tmp_path / "ds", "mri", n_cases=1)
    with pytest.raises(InputError, match="Is it an MRI given to a CT model"):
        plan_dataset(folder, "ct")


def test_mri_liver_masks_must_be_all_or_none(tmp_path):
    folder = write_dataset(tmp_path / "ds", "mri", n_cases=2)
    manifest = folder / "manifest.csv"
    lines = manifest.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ","
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="1 of 2 cases have no liver mask"):
        plan_dataset(folder, "mri")


# ----------------------------------------------------------------------------------------------------- one image
def test_preprocess_ct_and_return_exactly_to_the_original_grid(tmp_path, ct_plans):
    geometry_kw = dict(shape_zyx=(9, 36, 40), spacing_mm_xyz=(1.2, 1.1, 5.0), direction=oblique_direction(True))
    image, tumor, _ = synthetic_case("ct", seed=21, **geometry_kw)
    path = write_volume(image, tmp_path / "ct.nii.gz")
    volume = read_volume(path)
    prep = preprocess_image(volume, ct_plans)
    assert isinstance(prep.data, torch.Tensor) and prep.data.dtype == torch.float32
    assert tuple(prep.data.shape) == prep.target.shape_zyx and prep.original == volume.geometry
    assert prep.target.spacing_mm == pytest.approx(ct_plans.target_spacing_mm_xyz, rel=0.1)
    assert prep.orders_back() == (0, 1, 1)  # 5 mm vs ~1.2 mm: thick slices go back with nearest along z
    assert prep.warnings == []
    tumour_target = resample_mask_to_target(tumor, prep)
    assert abs(float(prep.data[torch.from_numpy(tumour_target) > 0].mean())) < 0.5  # tumour ~ z-score 0

    probs = torch.stack([1 - torch.from_numpy(tumour_target).float(), torch.from_numpy(tumour_target).float()])
    back = resample_to_original(probs, prep)
    assert back.shape == (2, *volume.array.shape) and back.dtype == torch.float32
    labels = labels_on_original(probs, prep)
    out = write_volume(volume.with_array(labels), tmp_path / "labels.nii.gz")
    reread = sitk.ReadImage(str(out))
    source = sitk.ReadImage(str(path))
    assert reread.GetSize() == source.GetSize()
    np.testing.assert_allclose(reread.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(reread.GetOrigin(), source.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(reread.GetDirection(), source.GetDirection(), atol=1e-6)
    dice = 2 * np.sum(labels * tumor.array) / (labels.sum() + tumor.array.sum())
    assert dice > 0.9
    # numpy in -> numpy out, and the SimpleITK reference agrees with the torch path.
    np.testing.assert_allclose(resample_to_original(probs.numpy(), prep, backend="sitk"), back.numpy(), atol=1e-4)


def test_torch_and_sitk_backends_give_the_same_preprocessed_image(ct_plans):
    image, _, _ = synthetic_case("ct", seed=3, spacing_mm_xyz=(1.3, 1.2, 3.0))
    a = preprocess_image(image, ct_plans, backend="sitk").numpy()
    b = preprocess_image(image, ct_plans, backend="torch").numpy()
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_bad_images_are_refused_before_work(ct_plans, mri_plans, tmp_path):
    mri, _, _ = synthetic_case("mri")
    with pytest.raises(InputError, match="MRI given to a CT model"):
        preprocess_image(mri, ct_plans)
    ct, _, _ = synthetic_case("ct", spacing_mm_xyz=(0.7, 0.7, 15.0))
    with pytest.raises(InputError, match="implausible voxel spacing"):
        preprocess_image(ct, ct_plans)


def test_mri_liver_mask_given_fallback_and_off_grid(mri_plans):
    image, tumor, liver = synthetic_case("mri", seed=31)
    with_mask = preprocess_image(image, mri_plans, liver_mask=liver)
    assert with_mask.warnings == [] and with_mask.liver_mask is not None
    assert abs(float(with_mask.data.mean())) < 1e-4 and abs(float(with_mask.data.std()) - 1) < 1e-3
    fallback = preprocess_image(image, mri_plans)
    assert len(fallback.warnings) == 1 and "no liver mask" in fallback.warnings[0]
    assert fallback.liver_mask.array.sum() > liver.array.sum()  # the body is bigger than the liver
    shifted = Volume(liver.array, Geometry(liver.geometry.size, liver.spacing_mm, (0, 0, 0)))
    with pytest.raises(GeometryError, match="liver mask"):
        preprocess_image(image, mri_plans, liver_mask=shifted)


def test_mri_liver_mask_from_a_liver_bundle(tmp_path):
    liver_plans = plan_dataset(write_dataset(tmp_path / "ds", "mri", n_cases=2), "mri", label_source="liver")
    assert liver_plans.labels == {"background": 0, "liver": 1} and liver_plans.mri.nyul is None
    torch.manual_seed(0)
    net = build_network(liver_plans, width=0.125)  # untrained: this checks the plumbing, not the mask quality
    bundle = save_bundle(tmp_path / "liver-demo", net, liver_plans, name="liver-demo", version="0.0.1",
                         modality="mri", card_markdown="# test liver model", width=0.125)
    tumour_plans = plan_dataset(write_dataset(tmp_path / "ds2", "mri", n_cases=2, seed=5), "mri")
    from HepatoblastomaSegLib.bundle import load_bundle

    image, _, _ = synthetic_case("mri", seed=41)
    prep = preprocess_image(image, tumour_plans, liver_model=load_bundle(bundle))
    assert prep.liver_mask is not None and prep.liver_mask.geometry == image.geometry
    assert set(np.unique(prep.liver_mask.array)) <= {0, 1}
    assert not any("no liver mask" in w for w in prep.warnings)


# ----------------------------------------------------------------------------------------------------- cache
def test_cache_computes_once_and_notices_changed_files(tmp_path, ct_dataset, ct_plans):
    entries = read_manifest(ct_dataset)
    cache = PreprocessedCache(tmp_path / "cache", ct_plans)
    assert cache.build(entries) == ["case00", "case01", "case02"]
    assert cache.build(entries) == []  # everything read back from disk
    case = cache.get(entries[1], mmap=True)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.shape == case.label.shape == case.target.shape_zyx
    assert set(np.unique(case.label)) == {0, 1}
    fresh = preprocess_image(read_volume(entries[1].image), ct_plans)
    np.testing.assert_array_equal(np.asarray(case.image), fresh.numpy())
    # Touch one input: only that case is recomputed. Other plans: another cache folder.
    stat = entries[2].tumor.stat()
    os.utime(entries[2].tumor, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.build(entries) == ["case02"]
    other = PreprocessedCache(tmp_path / "cache", ct_plans.replace(ct=ct_plans.ct.__class__(
        **{**ct_plans.ct.__dict__, "mean_hu": 0.0})))
    assert other.folder != cache.folder
    assert not list((tmp_path / "cache").rglob("*.partial*"))


def test_cache_built_by_worker_processes_holds_the_same_arrays_and_names_a_bad_file(tmp_path, ct_dataset, ct_plans):
    entries = read_manifest(ct_dataset)
    serial = PreprocessedCache(tmp_path / "serial", ct_plans)
    parallel = PreprocessedCache(tmp_path / "parallel", ct_plans)
    assert serial.build(entries) == parallel.build(entries, workers=2) == ["case00", "case01", "case02"]
    for entry in entries:
        a, b = serial.load(entry), parallel.load(entry)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.target == b.target
    assert parallel.build(entries, workers=2) == []
    # A broken case in a worker: the error reaches the caller with its file and problem apart.
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(entries[0].image.read_bytes()[:200])
    bad = [dataclasses.replace(entries[0], case="bad", image=broken), dataclasses.replace(entries[1], case="good")]
    with pytest.raises(InputError) as info:
        PreprocessedCache(tmp_path / "bad", ct_plans).build(bad, workers=2)
    assert info.value.path == broken and str(broken) in str(info.value)


# ----------------------------------------------------------------------------------------------------- CLI
def test_plans_record_the_dataset_folder_as_given_not_this_machines_absolute_path(tmp_path, ct_dataset,
                                                                                 monkeypatch):
    monkeypatch.chdir(ct_dataset.parent)
    plans = plan_dataset(ct_dataset.name, "ct")
    assert plans.dataset.source == ct_dataset.name and plans.dataset.num_cases == 3


def test_hbseg_plan_command(tmp_path, ct_dataset, capsys):
    out = tmp_path / "plans.json"
    assert main(["plan", str(ct_dataset), "--modality", "ct", "-o", str(out), "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    assert "patch" in printed and "target spacing" in printed
    plans = Plans.load(out)
    assert plans.modality == "ct" and json.loads(out.read_text())["spacing"]["rule"] == "median"
    # A library error is one line on stderr and exit code 2.
    assert main(["plan", str(tmp_path / "nowhere"), "--modality", "ct", "-o", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset folder not found" in err[0]


def test_hbseg_plan_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = capsys.readouterr().out
    assert "manifest.csv" in text and "examples:" in text and "GB" in text


def test_a_given_target_spacing_replaces_the_rule_and_the_network_is_planned_for_it(tmp_path, ct_dataset, capsys):
    out = tmp_path / "coarse.json"
    assert main(["plan", str(ct_dataset), "--modality", "ct", "--target-spacing-mm", "3,3,6", "-o", str(out),
                 "--progress", "none"]) == 0
    coarse, usual = Plans.load(out), plan_dataset(ct_dataset, "ct")
    assert coarse.target_spacing_mm_xyz == (3.0, 3.0, 6.0) and coarse.spacing.rule == "given"
    assert coarse.spacing.median_spacing_mm_xyz == usual.target_spacing_mm_xyz  # the rule's choice stays on record
    assert coarse.topology.median_shape_zyx != usual.topology.median_shape_zyx  # planned for the coarse grid
    volume = read_volume(read_manifest(ct_dataset)[0].image)
    extent_mm_zyx = np.array(volume.array.shape) * np.array(volume.spacing_mm[::-1])
    prep = preprocess_image(volume, coarse)
    assert np.all(np.abs(np.array(prep.data.shape[-3:]) - extent_mm_zyx / (6.0, 3.0, 3.0)) <= 1)
    for bad in ("3,3", "3,0,5", "a,b,c"):
        assert main(["plan", str(ct_dataset), "--modality", "ct", "--target-spacing-mm", bad, "-o",
                     str(tmp_path / "bad.json"), "--progress", "none"]) == 2
        assert "--target-spacing-mm" in capsys.readouterr().err
    assert main(["plan", str(ct_dataset), "--modality", "ct", "--like", "nnunet-v1", "--target-spacing-mm", "3,3,6",
                 "-o", str(tmp_path / "bad.json"), "--progress", "none"]) == 2
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(Exception, match="target spacing must be"):
        plan_dataset(ct_dataset, "ct", target_spacing_mm_xyz=(3.0, 3.0, 50.0))
    for flag, bad in (("--target-spacing-mm", "3,3"), ("--patch-size", "32,0,64")):  # hbseg train parses both too
        assert main(["train", str(ct_dataset), "--modality", "ct", "-o", str(tmp_path / "model"), flag, bad,
                     "--progress", "none"]) == 2
        assert flag in capsys.readouterr().err and not (tmp_path / "model").exists()
