"""The regional-field augmentation (``hbseg train --regional-field-hu``): a smooth random field added to CT patches,
because real organs are not evenly enhanced. Off by default without a single extra random draw; on, it is the
trilinear interpolation of its control points (checked against SciPy's zoom) and leaves the labels alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.train.augment import SampleParams, augment_sample, draw_params
from HepatoblastomaSegLib.train.config import AugmentConfig, TrainConfig

PATCH, SPACING = (8, 32, 40), (4.0, 1.5, 1.5)


def test_off_by_default_and_drawn_last_so_other_draws_do_not_move():
    off = draw_params(np.random.default_rng(5), AugmentConfig(), PATCH, SPACING)
    on = draw_params(np.random.default_rng(5), AugmentConfig(regional_field_hu=6.0), PATCH, SPACING, hu_per_unit=30.0)
    assert off.regional_field is None and on.regional_field is not None
    for name in ("matrix", "noise_seed", "noise_std", "blur_sigma_vox", "brightness", "gamma", "mirror_zyx"):
        assert getattr(on, name) == getattr(off, name), name
    with pytest.raises(ValueError, match="hu_per_unit"):
        draw_params(np.random.default_rng(5), AugmentConfig(regional_field_hu=6.0), PATCH, SPACING)


def test_control_points_every_30_mm_and_their_sd_up_to_the_asked_hu():
    cfg = AugmentConfig(regional_field_hu=6.0)
    fields = [draw_params(np.random.default_rng(i), cfg, PATCH, SPACING, hu_per_unit=30.0).regional_field
              for i in range(300)]
    expected = [max(2, math.ceil(p * s / 30.0) + 1) for p, s in zip(PATCH, SPACING)]
    assert all(list(f.shape) == expected for f in fields)
    # SD uniform in 0..6 HU: its mean square is 6^2 / 3 = 12 HU^2, in units of 30 HU per unit.
    mean_square_hu = float(np.mean([np.mean(f.astype(np.float64) ** 2) for f in fields])) * 30.0 ** 2
    assert mean_square_hu == pytest.approx(12.0, rel=0.15)
    assert max(float(np.std(f)) * 30.0 for f in fields) < 6.0 * 1.6


def test_the_field_is_the_trilinear_interpolation_of_its_control_points_and_labels_stay():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((3, 4, 5)).astype(np.float32)
    image = torch.randn(1, *PATCH, generator=torch.Generator().manual_seed(1))
    label = (torch.rand(1, *PATCH, generator=torch.Generator().manual_seed(2)) > 0.7).to(torch.uint8)
    out, out_label = augment_sample(image, label, SampleParams(regional_field=points), PATCH, 2)
    expected = ndimage.zoom(points.astype(np.float64), [n / g for n, g in zip(PATCH, points.shape)],
                            order=1, grid_mode=False)
    assert expected.shape == PATCH
    np.testing.assert_allclose((out - image)[0].numpy(), expected, atol=1e-5)
    assert out_label.equal(label)


def test_the_field_is_refused_for_mri_and_below_zero_and_described_for_the_card(tmp_path):
    base = dict(dataset_dir=tmp_path, output_dir=tmp_path / "out")
    for modality, hu, problem in (("mri", 5.0, "CT only"), ("ct", -1.0, "0 or more HU")):
        with pytest.raises(ConfigError, match=problem):
            TrainConfig(modality=modality, augment=AugmentConfig(regional_field_hu=hu), **base).validated()
    assert any("regional field" in line and "up to 6 HU" in line
               for line in AugmentConfig(regional_field_hu=6.0).describe())
    assert not any("regional field" in line for line in AugmentConfig().describe())
