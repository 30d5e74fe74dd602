"""``hbseg train`` end to end on tiny synthetic datasets: the bundle it writes, the log, the learning curve, exact
resume, the liver target, the validation split, and the clear errors for bad datasets and output folders.

Runs are tiny (width 0.125, patch 8x32x32, 2 epochs of 3 iterations) so the whole file takes well under a minute;
they check plumbing and exactness, not segmentation quality.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import InputError
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_volume
from HepatoblastomaSegLib.train.split import make_split

from helpers_synthetic import write_dataset

TINY = ["--iters-per-epoch", "3", "--width", "0.125", "--patch-size", "8,32,32", "--workers", "0",
        "--val-fraction", "0.25", "--progress", "none"]


def run_train(dataset, out, *extra) -> int:
    return main(["train", str(dataset), "--modality", "ct", "-o", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ct") / "ds", "ct", n_cases=4)


@pytest.fixture(scope="module")
def trained(ct_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    assert run_train(ct_dataset, out, "--epochs", "2") == 0
    return out


def test_training_writes_a_loadable_bundle_with_a_model_card(trained, ct_dataset):
    bundle = load_bundle(trained, modality="ct")
    assert bundle.width == 0.125 and bundle.plans.patch_size_zyx == (8, 32, 32)
    card = bundle.card
    for text in ("Epochs: 2 of 2 planned", "3 cases (case0", "Wall time", "CPU", "Best mean Dice",
                 "generalised Dice", "Nesterov momentum 0.99", "hbseg train", "--epochs 2", "not for clinical use"):
        assert text in card, text
    # The model is usable for inference as it stands.
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions

    image = read_volume(ct_dataset / "case03" / "image.nii.gz")
    prediction = Predictor(bundle, PredictorOptions(device="cpu", tta=False)).predict(image)
    assert prediction.mask.array.shape == image.array.shape


def test_log_learning_curve_split_and_checkpoint(trained):
    training = trained / "training"
    with open(training / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_dice"]) <= 1 and float(r["lr"]) == 0.01
               for r in rows)
    import matplotlib.image

    curve = matplotlib.image.imread(training / "learning_curve.png")
    assert curve.ndim == 3 and curve.shape[0] > 100
    with open(training / "train_set" / "manifest.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    folder = training / "checkpoint-e00002"
    state = torch.load(folder / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    weights = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("deep_supervision_heads.") for k in weights)  # everything needed to resume


def test_resume_continues_exactly(trained, ct_dataset, tmp_path):
    out = tmp_path / "resumed"
    assert run_train(ct_dataset, out, "--epochs", "1") == 0
    assert run_train(ct_dataset, out, "--epochs", "2", "--resume") == 0
    straight = json.loads((trained / "training" / "ddp_check.json").read_text())
    resumed = json.loads((out / "training" / "ddp_check.json").read_text())
    assert resumed["final_state_sha256_per_rank"] == straight["final_state_sha256_per_rank"]
    with open(out / "training" / "log.csv", newline="") as a, open(trained / "training" / "log.csv", newline="") as b:
        assert [r["train_loss"] for r in csv.DictReader(a)] == [r["train_loss"] for r in csv.DictReader(b)]


def test_time_limit_stops_after_the_epoch_that_would_overrun_and_the_card_says_so(ct_dataset, tmp_path):
    # 1e-4 min (6 ms) is shorter than any epoch: the run must stop after its first epoch, not run all five.
    out = tmp_path / "limited"
    assert run_train(ct_dataset, out, "--epochs", "5", "--time-limit-min", "0.0001") == 0
    with open(out / "training" / "log.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1"]
    card = load_bundle(out).card
    assert "Epochs: 1 of 5 planned (stopped: time limit of 0.0001 min reached)" in card
    assert "--time-limit-min 0.0001" in card  # the command that reproduces it
    # A generous limit changes nothing.
    roomy = tmp_path / "roomy"
    assert run_train(ct_dataset, roomy, "--epochs", "2", "--time-limit-min", "600") == 0
    assert "Epochs: 2 of 2 planned," in load_bundle(roomy).card


def test_init_weights_start_from_a_bundle_with_its_plans_and_refuse_another_width(trained, ct_dataset, tmp_path,
                                                                                capsys):
    out = tmp_path / "finetuned"
    # A vanishing learning rate: the weights after one epoch are the initial ones, so they must be the bundle's.
    assert run_train(ct_dataset, out, "--epochs", "1", "--init-weights", str(trained), "--lr", "1e-12") == 0
    start = load_bundle(trained).state_dict()
    end = load_bundle(out).state_dict()
    assert start.keys() == end.keys()
    for key in start:
        torch.testing.assert_close(end[key].float(), start[key].float(), atol=1e-6, rtol=0)
    assert json.loads((out / "plans.json").read_text())["intensity"] == json.loads(
        (trained / "plans.json").read_text())["intensity"]
    assert "initial weights from the bundle" in load_bundle(out).card
    # Without --width the bundle's width is taken; a different one is refused before any preprocessing.
    inherit = tmp_path / "inherit"
    assert main(["train", str(ct_dataset), "--modality", "ct", "-o", str(inherit), "--epochs", "1",
                 "--init-weights", str(trained), *TINY[:2], *TINY[4:], "--lr", "1e-12"]) == 0
    assert load_bundle(inherit).width == pytest.approx(0.125)
    wide = tmp_path / "wide"
    assert main(["train", str(ct_dataset), "--modality", "ct", "-o", str(wide), "--epochs", "1",
                 "--init-weights", str(trained), *TINY[:2], "--width", "0.25", *TINY[4:]]) == 2
    err = capsys.readouterr().err
    assert "width is 0.125" in err and "--width is 0.25" in err
    assert not (wide / "training").exists()


def test_refuses_to_overwrite_a_run_or_resume_with_another_width(trained, ct_dataset, capsys):
    assert run_train(ct_dataset, trained, "--epochs", "2") == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(ct_dataset), "--modality", "ct", "-o", str(trained), "--epochs", "3", "--resume",
                 *TINY[:2], "--width", "0.25", *TINY[4:]]) == 2
    assert "width" in capsys.readouterr().err


def test_liver_target_on_mri(tmp_path):
    dataset = write_dataset(tmp_path / "mri", "mri", n_cases=3)
    out = tmp_path / "liver"
    assert main(["train", str(dataset), "--modality", "mri", "--target", "liver", "-o", str(out), "--epochs", "1",
                 "--iters-per-epoch", "2", "--width", "0.125", "--patch-size", "8,32,32", "--workers", "0",
                 "--val-fraction", "0.34", "--progress", "none", "--fp16-weights"]) == 0
    bundle = load_bundle(out, modality="mri")
    assert bundle.plans.labels == {"background": 0, "liver": 1} and bundle.plans.mri.nyul is None
    assert bundle.weights_dtype == "float16" and "liver (including tumour)" in bundle.card


def _zero_tumours(dataset):
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
        mask = read_volume(folder / "tumor.nii.gz")
        write_volume(mask.with_array(np.zeros_like(mask.array)), folder / "tumor.nii.gz")


def test_clear_errors_for_empty_masks_misfit_masks_and_unwritable_output(tmp_path, capsys):
    empty = write_dataset(tmp_path / "empty", "ct", n_cases=2)
    _zero_tumours(empty)
    assert run_train(empty, tmp_path / "out1", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "empty" in err

    misfit = write_dataset(tmp_path / "misfit", "ct", n_cases=2)
    mask = read_volume(misfit / "case01" / "tumor.nii.gz")
    g = mask.geometry
    write_volume(Volume(mask.array[:, :-2].copy(), Geometry((g.size[0], g.size[1] - 2, g.size[2]), g.spacing_mm,
                                                             g.origin_mm, g.direction)),
                 misfit / "case01" / "tumor.nii.gz")
    assert run_train(misfit, tmp_path / "out2", "--epochs", "1", "--val-fraction", "0") == 2
    err = capsys.readouterr().err
    assert "case01/tumor.nii.gz" in err and "grid" in err

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert run_train(misfit, blocker / "model", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(blocker) in err


def test_validation_split_options(ct_dataset, tmp_path):
    split = make_split(ct_dataset, tmp_path / "a", val_fraction=0.5, seed=1)
    assert len(split.train) == 2 and len(split.val) == 2
    again = make_split(ct_dataset, tmp_path / "b", val_fraction=0.5, seed=1)
    assert [e.case for e in again.val] == [e.case for e in split.val]       # seeded
    held = tmp_path / "held.csv"
    held.write_text("case\ncase01\n")
    split = make_split(ct_dataset, tmp_path / "c", val_manifest=held)
    assert [e.case for e in split.val] == ["case01"] and "case01" not in [e.case for e in split.train]
    cohort = write_dataset(tmp_path / "cohort", "ct", n_cases=1, seed=50)
    renamed = tmp_path / "cohort" / "validation_cases.csv"
    (cohort / "manifest.csv").rename(renamed)
    split = make_split(ct_dataset, tmp_path / "d", val_manifest=renamed)
    assert len(split.train) == 4 and split.val[0].image == (cohort / "case00" / "image.nii.gz").resolve()
    held.write_text("case\nnope\n")
    with pytest.raises(InputError, match="nope"):
        make_split(ct_dataset, tmp_path / "e", val_manifest=held)
