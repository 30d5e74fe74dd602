"""``hbseg plan``/``hbseg train`` on Medical Segmentation Decathlon and nnU-Net v1/v2 dataset folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers_nnunet_folders import LAYOUTS, phantom_nnunet_folder

from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import ConfigError, InputError
from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.preprocess import read_manifest
from HepatoblastomaSegLib.preprocess.dataset import read_case
from HepatoblastomaSegLib.preprocess.nnunet_dataset import LabelChoice, parse_label_options


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nnunet_folders")
    return {layout: phantom_nnunet_folder(tmp, layout) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_as_the_phantoms_tumour_and_liver(folders, layout):
    entries = read_manifest(folders[layout])
    phantoms = {e.case: e for e in read_manifest(folders[layout].parent / "phantoms")}
    assert [e.case for e in entries] == sorted(phantoms)
    for entry in entries:
        assert (entry.tumor_values, entry.liver_values) == ((2,), (1,))  # from the names "cancer" and "liver"
        data = read_case(entry, "ct")
        truth = phantoms[entry.case]
        np.testing.assert_array_equal(data.tumor.array, read_volume(truth.tumor).array)
        np.testing.assert_array_equal(data.liver.array, read_volume(truth.liver).array)
        assert data.tumor.array.dtype == np.uint8 and data.image.geometry == read_volume(truth.image).geometry


def test_label_option_overrides_names_and_other_labels_become_background(folders):
    entries = read_manifest(folders["msd"], label_map=LabelChoice(tumor=(1,), liver=()))
    data = read_case(entries[0], "ct")
    liver_only = read_volume(read_manifest(folders["msd"].parent / "phantoms")[0].liver).array
    tumor = read_volume(read_manifest(folders["msd"].parent / "phantoms")[0].tumor).array
    np.testing.assert_array_equal(data.tumor.array, (liver_only > 0) & (tumor == 0))
    assert data.liver is None


def test_label_options_parse_and_refuse_clearly():
    assert parse_label_options(["tumor=2"]) == LabelChoice((2,), None)
    assert parse_label_options(["tumour=2,liver=1"]) == LabelChoice((2,), (1,))
    assert parse_label_options(["tumor=2+3", "liver=1"]) == LabelChoice((2, 3), (1,))
    for bad in (["tumor"], ["kidney=3"], ["tumor=2", "tumor=3"], ["tumor=1,liver=1"], ["tumor=0"]):
        with pytest.raises(ConfigError):
            parse_label_options(bad)


def test_ambiguous_or_unknown_labels_and_several_channels_are_refused(tmp_path, folders, capsys):
    ambiguous = phantom_nnunet_folder(tmp_path, "v2", label_names=("organ", "other"))
    with pytest.raises(ConfigError, match="--label tumor=VALUE"):
        read_manifest(ambiguous)
    assert read_manifest(ambiguous, label_map=LabelChoice((2,)))[0].tumor_values == (2,)
    with pytest.raises(ConfigError, match="does not list"):
        read_manifest(ambiguous, label_map=LabelChoice((5,)))
    data = json.loads((ambiguous / "dataset.json").read_text())
    data["channel_names"] = {"0": "T2", "1": "ADC"}
    (ambiguous / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="2 channels"):
        read_manifest(ambiguous, label_map=LabelChoice((2,)))
    assert main(["plan", str(ambiguous), "--modality", "ct", "-o", str(tmp_path / "p.json"), "--label",
                 "tumor=2"]) == 2
    assert "dataset.json" in capsys.readouterr().err and not (tmp_path / "p.json").exists()


def test_plan_on_an_msd_folder(folders, tmp_path):
    out = tmp_path / "plans.json"
    assert main(["plan", str(folders["msd"]), "--modality", "ct", "--label", "tumor=2", "-o", str(out),
                 "--progress", "none"]) == 0
    plans = json.loads(out.read_text())
    assert plans["labels"] == {"background": 0, "tumor": 1}
    assert plans["dataset"]["num_cases"] == 3 and plans["dataset"]["crop"]["rule"] == "nonzero_after_window"


def test_train_one_iteration_on_an_msd_folder(folders, tmp_path):
    out = tmp_path / "model"
    assert main(["train", str(folders["msd"]), "--modality", "ct", "--label", "tumor=2", "-o", str(out),
                 "--epochs", "1", "--iters-per-epoch", "1", "--width", "0.125", "--patch-size", "8,32,32",
                 "--workers", "0", "--val-fraction", "0", "--progress", "none"]) == 0
    bundle = load_bundle(out, modality="ct")
    assert bundle.plans.dataset.num_cases == 3 and bundle.plans.dataset.crop.rule == "nonzero_after_window"
    with open(out / "training" / "train_set" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["tumor_values"] for r in rows} == {"2"} and {r["liver_values"] for r in rows} == {"1"}
    assert "--label tumor=2" in bundle.card
