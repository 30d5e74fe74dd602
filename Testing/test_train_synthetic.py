"""Domain randomisation (``hbseg train --domain-randomisation P``): per-tissue random intensities rendered from the
phantom's tissue label map, labels untouched, and the tissue maps carried from the phantom to the training cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.phantom import generate_case, write_dataset
from HepatoblastomaSegLib.phantom.tissues import TUMOUR_TISSUES, Tissue
from HepatoblastomaSegLib.train.augment import SampleParams, augment_sample, draw_params
from HepatoblastomaSegLib.train.config import AugmentConfig
from HepatoblastomaSegLib.train.synthetic import MIN_TUMOUR_CONTRAST, label_intensities, synthesise


@pytest.fixture(scope="module")
def tissues():
    case = generate_case("ct", 3, 1, "small", variety="full")
    labels = case.tissues.array[10:26, 20:108, 20:108]          # a crop through liver, tumour, spine, bowel
    return torch.from_numpy(np.ascontiguousarray(labels))[None]


def _tissue_means(image: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    return {int(t): float(image[labels == t].mean()) for t in torch.unique(labels)
            if int((labels == t).sum()) > 50}


def test_each_seed_gives_each_tissue_another_intensity(tissues):
    a, b = synthesise(tissues, 1), synthesise(tissues, 2)
    assert a.shape == tissues.shape and a.dtype == torch.float32
    means_a, means_b = _tissue_means(a, tissues), _tissue_means(b, tissues)
    assert len(means_a) >= 6
    shared = sorted(means_a)
    va, vb = np.array([means_a[t] for t in shared]), np.array([means_b[t] for t in shared])
    assert np.abs(va - vb).mean() > 0.3                 # the tissues' intensities moved
    assert abs(np.corrcoef(va, vb)[0, 1]) < 0.9        # and not just by a common shift or scale
    assert synthesise(tissues, 1).equal(a)              # reproducible from the seed


def test_intensity_is_piecewise_by_tissue_and_normalised_over_the_body(tissues):
    image = synthesise(tissues, 5)[0]
    labels = tissues[0]
    body = labels != int(Tissue.AIR)
    assert float(image[body].mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(image[body].std()) == pytest.approx(1.0, abs=1e-2)
    # Most of the variance is between tissues (each tissue is one random level plus texture and a smooth bias).
    within = np.mean([float(image[labels == t].var()) for t in torch.unique(labels) if int((labels == t).sum()) > 50])
    assert within < 0.35 * float(image[body].var())


def test_tumour_keeps_a_contrast_to_the_liver():
    for seed in range(200):
        means, _, _ = label_intensities(seed)
        for tissue in TUMOUR_TISSUES:
            assert abs(float(means[int(tissue)] - means[int(Tissue.LIVER)])) >= MIN_TUMOUR_CONTRAST - 1e-6


def test_labels_stay_put_and_the_image_changes(tissues):
    label = (torch.isin(tissues, torch.tensor([int(t) for t in TUMOUR_TISSUES], dtype=tissues.dtype))).to(torch.uint8)
    image = torch.randn(tissues.shape)
    params = SampleParams(synthetic_seed=7)
    out_image, out_label = augment_sample(image, label, params, tissues.shape[1:], 2, tissues=tissues)
    assert out_label.equal(label)
    assert not torch.allclose(out_image, image)
    assert out_image.equal(synthesise(tissues, 7))
    with pytest.raises(ValueError, match="tissue label map"):
        augment_sample(image, label, params, tissues.shape[1:], 2)


def test_share_of_synthetic_samples_and_untouched_draws_when_off():
    on = AugmentConfig(p_synthetic=0.5)
    drawn = [draw_params(np.random.default_rng(i), on, (8, 32, 32), (3.0, 1.0, 1.0)) for i in range(400)]
    share = np.mean([p.synthetic_seed is not None for p in drawn])
    assert 0.42 < share < 0.58
    # Off (the default): not a single extra random draw, so earlier runs see exactly the same samples.
    off = draw_params(np.random.default_rng(3), AugmentConfig(), (8, 32, 32), (3.0, 1.0, 1.0))
    assert off.synthetic_seed is None
    zero = draw_params(np.random.default_rng(3), AugmentConfig(p_synthetic=0.0), (8, 32, 32), (3.0, 1.0, 1.0))
    assert zero.noise_seed == off.noise_seed and zero.mirror_zyx == off.mirror_zyx


def test_training_caches_the_tissue_maps_and_refuses_a_dataset_without_them(tmp_path, capsys):
    dataset = tmp_path / "ds"
    write_dataset(dataset, "ct", 2, seed=4, size="small")
    out = tmp_path / "model"
    args = ["train", str(dataset), "--modality", "ct", "-o", str(out), "--epochs", "1", "--iters-per-epoch", "1",
            "--width", "0.125", "--patch-size", "8,32,32", "--workers", "0", "--val-fraction", "0",
            "--progress", "none"]
    assert main([*args, "--domain-randomisation", "1"]) == 0
    caches = list((out / "training" / "cache" / "train").glob("*/hb_ct_000.tissues.npy"))
    assert len(caches) == 1
    tissue = np.load(caches[0])
    label = np.load(caches[0].with_name("hb_ct_000.label.npy"))
    assert tissue.shape == label.shape
    in_tumour = np.isin(tissue[label == 1], [int(t) for t in TUMOUR_TISSUES]).mean()
    assert in_tumour > 0.95
    assert "domain randomisation" in (out / "model_card.md").read_text()

    # The same dataset without the tissues column: refused before any preprocessing, naming the dataset.
    manifest = dataset / "manifest.csv"
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "tissues"]
    manifest.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    assert main([*args[:5], str(tmp_path / "model2"), *args[6:], "--domain-randomisation", "0.5"]) == 2
    assert "tissue label map" in capsys.readouterr().err
