"""The bundled demo models: intact, honest about what they are, and doing what the demo promises on phantoms
they never saw (series seeds that neither their training nor the other tests use)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from HepatoblastomaSegLib.bundle import RESOURCES_MODELS_DIR, load_bundle
from HepatoblastomaSegLib.evaluate.metrics import dice
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.phantom import generate_case, write_dataset
from HepatoblastomaSegLib.preprocess import read_manifest

from helpers_benchmarks import import_train_demo_models

DEMO_MODELS = {"ct-demo": "ct", "mri-demo": "mri", "mri-liver-demo": "mri", "ct-liver-demo": "ct"}
UNSEEN_SEED = 777  # not a training (1000-1003), demo (2026) or benchmark (4242) series


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_bundled_model_is_intact_small_and_labelled_as_a_demo(name):
    bundle = load_bundle(name)  # verifies the SHA256 of the weights against bundle.json
    assert bundle.path == RESOURCES_MODELS_DIR / name and bundle.modality == DEMO_MODELS[name]
    weights = bundle.path / "model.safetensors"
    assert weights.stat().st_size <= 25e6
    assert bundle.weights_dtype == "float16"
    meta = json.loads((bundle.path / "bundle.json").read_text(encoding="utf-8"))
    assert meta["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() == bundle.sha256
    card = bundle.card.lower()
    assert "synthetic phantoms" in card and "not for clinical use" in card
    assert "train_demo_models.py" in bundle.card and "held-out" in card
    # Plans name the training folder as given (relative to the repository), never one machine's absolute path.
    source = json.loads((bundle.path / "plans.json").read_text(encoding="utf-8"))["dataset"]["source"]
    assert source.startswith("demo_models_work") and not source.startswith("/")


@pytest.fixture(scope="module")
def ct_case():
    return generate_case("ct", UNSEEN_SEED, 0, "small")


@pytest.fixture(scope="module")
def ct_prediction(ct_case):
    predictor = Predictor.from_options(PredictorOptions(device="cpu", tta=False), modality="ct")
    assert predictor.bundle.name == "ct-demo"  # no --model: the bundled default of the modality
    return predictor.predict(ct_case.image)


def test_ct_demo_finds_the_tumour(ct_case, ct_prediction):
    value, _ = dice(ct_prediction.mask.array, ct_case.tumor.array)
    assert value > 0.6


def test_ct_liver_demo_finds_the_liver_and_anchors_the_tumour(ct_case, ct_prediction):
    from HepatoblastomaSegLib.preprocess.liver import liver_mask_from_model

    liver = liver_mask_from_model(ct_case.image, load_bundle("ct-liver-demo")).array
    truth = (ct_case.liver.array > 0) | (ct_case.tumor.array > 0)
    value, _ = dice(liver, truth)
    assert value > 0.7
    summary = ct_prediction.summary
    assert summary["liver_source"].startswith("ct-liver-demo") and summary["postprocessing"]["liver_anchor"]["applied"]


def test_entropy_is_bounded_and_highest_at_the_tumour_boundary(ct_prediction):
    """The most uncertain voxels sit on the model's own tumour boundary (where its decision flips), and the
    boundary band is far more uncertain than the rest of the image."""
    from scipy import ndimage

    entropy = ct_prediction.entropy.array
    assert entropy.min() >= 0 and entropy.max() <= math.log(2) + 1e-6
    mask = ct_prediction.mask.array.astype(bool)
    band = ndimage.binary_dilation(mask ^ ndimage.binary_erosion(mask), iterations=2)
    high = entropy > 0.5  # nats; ln 2 = 0.693 is a coin toss
    assert high.sum() > 100
    assert (high & band).sum() / high.sum() > 0.7
    assert entropy[band].mean() > 20 * entropy[~band].mean()


def test_mri_demo_with_its_liver_model(tmp_path):
    case = generate_case("mri", UNSEEN_SEED, 0, "small")
    predictor = Predictor.from_options(PredictorOptions(device="cpu", tta=False), modality="mri")
    assert predictor.liver_bundle is not None and predictor.liver_bundle.name == "mri-liver-demo"
    prediction = predictor.predict(case.image)
    assert not any("whole body" in w for w in prediction.summary["warnings"])
    assert prediction.summary["liver_model"].startswith("mri-liver-demo")
    value, _ = dice(prediction.mask.array, case.tumor.array)
    assert value > 0.3
    assert np.isfinite(prediction.entropy.array).all()


def test_a_continued_demo_model_records_how_its_initial_weights_were_trained(tmp_path):
    """train_demo_models.py --init-from: the card's command list gains one line with the earlier run's epochs and
    wall time, read from the earlier bundle's card."""
    module = import_train_demo_models()
    line = module.earlier_training_line(RESOURCES_MODELS_DIR / "ct-demo")
    card = load_bundle("ct-demo").card
    epochs = next(x for x in card.splitlines() if x.startswith("- Epochs:"))[2:].rstrip(".")
    assert line.startswith("# the initial weights (") and epochs in line and "Wall time:" in line
    (tmp_path / "model_card.md").write_text("# a card without a training section\n", encoding="utf-8")
    assert module.earlier_training_line(tmp_path).endswith("no training facts in its card")


def test_a_mixed_cohort_manifest_holds_both_series_with_paths_the_library_resolves(tmp_path):
    """train_demo_models.py write_mixed_manifest (also run on its own by benchmarks/gpu_train.sh): the rows of
    demo/ and full/ in one manifest, their paths prefixed, read back by the training code's manifest reader."""
    write_dataset(tmp_path / "demo", "ct", 1, seed=5, size="small")
    write_dataset(tmp_path / "full", "ct", 1, seed=5, size="small", first_index=100, variety="full")
    manifest = import_train_demo_models().write_mixed_manifest(tmp_path)
    assert manifest == tmp_path / "manifest.csv"
    entries = read_manifest(tmp_path)
    assert [e.case for e in entries] == ["hb_ct_000", "hb_ct_100"]
    for entry, part in zip(entries, ("demo", "full")):
        assert entry.image == tmp_path / part / entry.case / "image.nii.gz" and entry.image.is_file()
        assert entry.tumor == tmp_path / part / entry.case / "tumor.nii.gz"
        assert entry.tissues == tmp_path / part / entry.case / "tissues.nii.gz"
