"""Imported MONAI bundles against MONAI's own bundle machinery: same probabilities, same masks; and what is refused.

Each test writes a tiny bundle in the model zoo's layout (:mod:`helpers_monai_bundle`: ``configs/inference.json``
with the zoo's ``$``/``@`` expressions, ``metadata.json``, random weights as ``models/model.pt``), runs it with
``monai.bundle.ConfigParser`` on a small CT, imports it with ``hbseg import monai-bundle`` and compares.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.bundle_manifest import read_manifest
from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import ModelError
from HepatoblastomaSegLib.importers.monai_bundle import import_monai_bundle
from HepatoblastomaSegLib.infer.monai_bundle import MonaiBundleEngine
from HepatoblastomaSegLib.infer.uncertainty import entropy_nats
from HepatoblastomaSegLib.io import read_volume
from helpers_monai_bundle import (SEGRESNET, UNET, inference_config, make_monai_bundle, monai_reference,
                                  write_ct)
from helpers_pickles import PAYLOADS
from helpers_torch import one_thread  # noqa: F401 (autouse fixture: one torch thread per test)

TUMOR = 2




@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    return make_monai_bundle(tmp_path_factory.mktemp("monai") / "liver_tumor_bundle")


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return write_ct(tmp_path_factory.mktemp("ct") / "scan.nii.gz")


def test_hbseg_segment_on_imported_bundle_equals_monai(zoo_bundle, ct, tmp_path):
    probs, labels = monai_reference(zoo_bundle, ct, tmp_path / "monai")
    assert min(np.bincount(labels.ravel(), minlength=3)) > 0  # every label occurs: the comparison can fail
    assert main(["import", "monai-bundle", str(zoo_bundle), "-o", str(tmp_path / "bundle"),
                 "--tumor-label", "2"]) == 0
    ours, our_labels = MonaiBundleEngine(load_bundle(tmp_path / "bundle")).run(read_volume(ct))
    assert ours.shape == probs.shape
    assert np.abs(ours - probs).max() < 1e-4
    assert np.array_equal(our_labels, labels)

    assert main(["segment", str(ct), "--model", str(tmp_path / "bundle"), "--device", "cpu", "-o",
                 str(tmp_path / "out"), "--progress", "none"]) == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "segmentation.nii.gz")))
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "entropy.nii.gz")))
    assert np.array_equal(mask, labels == TUMOR)
    p = torch.from_numpy(probs[TUMOR])
    assert np.abs(entropy - entropy_nats(torch.stack((1 - p, p))).numpy()).max() < 2e-3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["review"]["needed"] in (True, False) and "reasons" in summary["review"]
    assert summary["liver_source"].endswith("(its liver label)")
    assert summary["liver_volume_ml"] == pytest.approx(np.isin(labels, (1, 2)).sum() * 2.0 * 2.2 * 4.0 / 1000)
    assert summary["monai_bundle"]["network"] == "UNet"
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["labels"][2]["name"] == "tumor" and meta["monai_bundle"]["tumor_label"]["name"] == "tumour"
    assert set(meta["files"]) >= {"model.safetensors", "plans.json", "model_card.md", "monai_inference.json"}
    assert "Imported from a MONAI bundle" in (tmp_path / "bundle" / "model_card.md").read_text()

    # a cohort run through the same predictor: the review flag reaches the cohort table
    (tmp_path / "cohort.csv").write_text(f"case,image\nA,{ct}\n")
    assert main(["segment", "--manifest", str(tmp_path / "cohort.csv"), "--model", str(tmp_path / "bundle"),
                 "--device", "cpu", "-o", str(tmp_path / "cohort"), "--progress", "none"]) == 0
    row = (tmp_path / "cohort" / "cohort_summary.csv").read_text().splitlines()[1].split(",")
    assert row[:2] == ["A", "ok"] and row[-2] in ("True", "False")
    cohort_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cohort" / "A" / "segmentation.nii.gz")))
    assert np.array_equal(cohort_mask, mask)


@pytest.mark.parametrize("variant", ["segresnet-logits-argmax-largest-first", "unet-sigmoid-yaml"])
def test_other_layouts_equal_monai(variant, ct, tmp_path):
    if variant.startswith("segresnet"):
        # z-score inside the nonzero region, no crop; no Activationsd: argmax of the logits, the largest component
        # of labels 1 and 2, then Invertd (labels inverted nearest); weights under a "model" key as the zoo's
        # CheckpointSaver writes them
        config = inference_config(SEGRESNET, crop=False, invert_then_argmax=False, activation=False,
                                  keep_largest=True, intensity={
                                      "_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True})
        folder = make_monai_bundle(tmp_path / "segresnet", network_def=SEGRESNET, config=config, weights="wrapped",
                                   seed=1)
    else:
        pytest.importorskip("yaml")
        import yaml

        net = {**UNET, "out_channels": 1}
        folder = make_monai_bundle(tmp_path / "sigmoid", network_def=net, labels={0: "background", 1: "lesion"},
                                   config=inference_config(net, sigmoid=True), seed=2)
        config_file = folder / "configs" / "inference.json"
        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(json.loads(config_file.read_text())))
        config_file.unlink()
    probs, labels = monai_reference(folder, ct, tmp_path / "monai")
    bundle = import_monai_bundle(folder, tmp_path / "bundle")
    assert read_manifest(bundle).kind == "monai"  # what the Slicer model list reads, without torch
    ours, our_labels = MonaiBundleEngine(load_bundle(bundle)).run(read_volume(ct))
    assert np.array_equal(our_labels, labels)
    assert len(np.unique(labels)) >= 2
    if variant.startswith("unet-sigmoid"):
        assert np.abs(ours[1:] - probs).max() < 1e-4  # sigmoid: channel 1 is p
    meta = json.loads((bundle / "bundle.json").read_text())
    record = meta["monai_bundle"]["record"]
    steps = [step["name"] for step in record["postprocessing"]]
    if variant.startswith("segresnet"):
        assert record["activation"] == "softmax"
        assert steps == ["AsDiscreted", "KeepLargestConnectedComponentd", "Invertd"]
    else:
        assert record["activation"] == "sigmoid" and steps == ["Invertd", "AsDiscreted"]


# ------------------------------------------------------------------------------------------------ refusals
def _edit(folder, change):
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _refused(folder, tmp_path, capsys, *words):
    assert main(["import", "monai-bundle", str(folder), "-o", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "bundle").exists()
    assert not list(tmp_path.glob(".bundle.*"))  # no partial output either
    return err


def test_mri_given_to_an_imported_ct_bundle_is_refused(zoo_bundle, tmp_path, capsys):
    mri = np.random.default_rng(0).uniform(50, 900, (12, 32, 32))  # no air: not a CT in Hounsfield units
    image = sitk.GetImageFromArray(mri.astype(np.int16))
    image.SetSpacing((2.0, 2.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "mri.nii.gz"))
    import_monai_bundle(zoo_bundle, tmp_path / "bundle", tumor_label="2")
    # --modality ct: past the command line's own guess, to the predictor's check
    assert main(["segment", str(tmp_path / "mri.nii.gz"), "--model", str(tmp_path / "bundle"), "--device", "cpu",
                 "--modality", "ct", "-o", str(tmp_path / "out"), "--progress", "none"]) == 2
    assert "does not look like a CT" in capsys.readouterr().err and not (tmp_path / "out" / "summary.json").exists()


def test_oblique_image_equals_monai(zoo_bundle, tmp_path):
    # an oblique, coronal-like grid: the RAS affine handed to MONAI must be the one its NIfTI reader builds
    c, s = np.cos(0.5), np.sin(0.5)
    scan = write_ct(tmp_path / "oblique.nii.gz", seed=1, direction=(c, -s, 0.0, 0.0, 0.0, -1.0, s, c, 0.0))
    probs, labels = monai_reference(zoo_bundle, scan, tmp_path / "monai")
    bundle = import_monai_bundle(zoo_bundle, tmp_path / "bundle", tumor_label="2")
    ours, our_labels = MonaiBundleEngine(load_bundle(bundle)).run(read_volume(scan))
    assert np.abs(ours - probs).max() < 1e-4 and np.array_equal(our_labels, labels)
    assert len(np.unique(labels)) == 3


def test_dollar_expression_is_refused_and_never_evaluated(tmp_path, capsys):
    from monai.bundle import ConfigParser

    folder = make_monai_bundle(tmp_path / "evil")
    marker = tmp_path / "ran"
    payload = f"$__import__('pathlib').Path({str(marker)!r}).touch() or [3.0, 3.0, 5.0]"
    _edit(folder, lambda c: c.update(pixdim=payload))
    _refused(folder, tmp_path, capsys, "inference.json", "Spacingd", "'$' expression")
    assert not marker.exists()
    # the payload is live: MONAI's own parser runs it
    parser = ConfigParser()
    parser.read_config(folder / "configs" / "inference.json")
    parser.get_parsed_content("pixdim")
    assert marker.exists()


def test_payload_in_keys_we_do_not_read_is_not_run(tmp_path):
    folder = make_monai_bundle(tmp_path / "zoo")
    marker = tmp_path / "ran"
    _edit(folder, lambda c: c.update(initialize=[f"$__import__('pathlib').Path({str(marker)!r}).touch()"]))
    import_monai_bundle(folder, tmp_path / "bundle")
    assert not marker.exists() and (tmp_path / "bundle" / "bundle.json").is_file()


def test_macro_to_a_file_outside_the_bundle_is_refused(tmp_path, capsys):
    folder = make_monai_bundle(tmp_path / "zoo")
    (tmp_path / "elsewhere.json").write_text(json.dumps({"roi": [32, 32, 16]}))
    _edit(folder, lambda c: c.update(roi=f"%{tmp_path / 'elsewhere.json'}::roi"))
    _refused(folder, tmp_path, capsys, "inference.json", "'inferer", "only JSON files inside the bundle folder")


def test_unknown_transform_is_refused(tmp_path, capsys):
    folder = make_monai_bundle(tmp_path / "zoo")
    _edit(folder, lambda c: c["preprocessing"]["transforms"].insert(
        3, {"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x * 2"}))
    _refused(folder, tmp_path, capsys, "inference.json", "preprocessing.transforms[3] (Lambdad)", "cannot be imported")


def test_target_outside_allow_list_is_refused(tmp_path, capsys):
    folder = make_monai_bundle(tmp_path / "zoo")
    _edit(folder, lambda c: c.update(network_def={"_target_": "subprocess.Popen", "args": ["touch", "x"]}))
    _refused(folder, tmp_path, capsys, "inference.json", "network_def", "subprocess.Popen")


def test_torchscript_only_is_refused(tmp_path, capsys):
    folder = make_monai_bundle(tmp_path / "zoo")
    (folder / "models" / "model.pt").rename(folder / "models" / "model.ts")
    _refused(folder, tmp_path, capsys, "TorchScript", "model.pt")


def test_missing_weights_and_pickled_module_are_refused(tmp_path, capsys):
    folder = make_monai_bundle(tmp_path / "zoo")
    (folder / "models" / "model.pt").unlink()
    _refused(folder, tmp_path, capsys, "missing weights models/model.pt")
    marker = tmp_path / "ran"
    torch.save({"model": PAYLOADS["os.system"](marker)}, folder / "models" / "model.pt")
    _refused(folder, tmp_path, capsys, "model.pt", "system")
    assert not marker.exists()


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path):
    folder = make_monai_bundle(tmp_path / "zoo")
    _edit(folder, lambda c: c["network_def"].update(channels=[8, 16, 32]))
    with pytest.raises(ModelError, match="do not fit MONAI's UNet"):
        import_monai_bundle(folder, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_arguments_monai_refuses_are_refused_at_import(tmp_path):
    folder = make_monai_bundle(tmp_path / "zoo")
    _edit(folder, lambda c: c["preprocessing"]["transforms"][3].update(mode="no-such-interpolation"))
    with pytest.raises(ModelError, match="'preprocessing' fails on a test image.*no-such-interpolation"):
        import_monai_bundle(folder, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_tampered_record_is_refused_at_load(zoo_bundle, tmp_path):
    bundle = import_monai_bundle(zoo_bundle, tmp_path / "bundle", tumor_label="tumour")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["monai_bundle"]["record"]["preprocessing"].append({"name": "Lambdad", "args": {"func": "$print"}})
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="Lambdad"):
        MonaiBundleEngine(load_bundle(bundle))
