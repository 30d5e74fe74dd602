"""Training parts without a training run: loss, augmentation, patch sampling, checkpoints, schedule, validation Dice.

Independent references: numpy formulas for the generalised Dice and the cross-entropy, scipy.ndimage for the
spatial transform and the blur, medpy for the Dice, torch.load(weights_only=True) and safetensors for checkpoints.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from medpy.metric.binary import dc
from scipy import ndimage

from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.io import Geometry
from HepatoblastomaSegLib.preprocess import CaseEntry, PreprocessedCache
from HepatoblastomaSegLib.preprocess.cache import CachedCase
from HepatoblastomaSegLib.train import checkpoint as ckpt
from HepatoblastomaSegLib.train.augment import (
    SampleParams,
    draw_params,
    gaussian_blur,
    intensity_transforms,
    rotation_matrix_zyx,
    source_box,
    spatial_transform,
)
from HepatoblastomaSegLib.train.config import AugmentConfig, TrainConfig
from HepatoblastomaSegLib.train.data import BatchLayout, TrainPatches, crop_padded, is_foreground_sample
from HepatoblastomaSegLib.train.loss import SegmentationLoss, deep_supervision_weights
from HepatoblastomaSegLib.train.schedule import LearningRateSchedule
from HepatoblastomaSegLib.train.validate import ValidationResult, dice_per_class, predict_labels

from helpers_synthetic import make_plans


# ------------------------------------------------------------------------------------------------ loss
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _reference_gdl_ce(logits: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """nnU-Net's CEGDL terms by hand: GDL with 1/V weights, no background, pooled over the batch; mean CE."""
    p = _softmax(logits)
    c = logits.shape[1]
    g = np.stack([(target[:, 0] == k) for k in range(c)], axis=1).astype(float)
    axes = (0, 2, 3, 4)
    tp = (p * g).sum(axes)[1:]
    denom = (p + g).sum(axes)[1:]
    w = 1.0 / g.sum(axes)[1:]
    gdl = 1 - (2 * (w * tp).sum() + 1e-5) / ((w * denom).sum() + 1e-5)
    logp = np.log(p)
    ce = -np.mean(np.take_along_axis(logp, target.astype(int), axis=1))
    return float(gdl), float(ce)


def test_loss_is_generalised_dice_1_over_v_without_background_plus_ce():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 6, 5))
    target = rng.integers(0, 3, size=(2, 1, 4, 6, 5))
    target[0, 0, :2] = 1  # unequal class volumes, so the 1/V weights matter
    gdl, ce = _reference_gdl_ce(logits, target)
    loss = SegmentationLoss()
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    assert value.item() == pytest.approx(gdl + ce, rel=1e-5)
    assert loss.last_terms["gdl"].item() == pytest.approx(gdl, rel=1e-5)
    only_dice = SegmentationLoss(use_ce=False)(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    assert only_dice.item() == pytest.approx(gdl, rel=1e-5)


def test_deep_supervision_weights_are_halved_and_normalised():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    rng = np.random.default_rng(1)
    heads = [rng.normal(size=(2, 2, 3, 4, 4)) for _ in range(3)]
    target = torch.tensor(rng.integers(0, 2, size=(2, 1, 3, 4, 4)))
    loss = SegmentationLoss()
    stacked = torch.tensor(np.stack(heads, axis=1), dtype=torch.float32)           # [B, 3, C, z, y, x]
    expected = sum(w * sum(_reference_gdl_ce(h, target.numpy()))
                   for w, h in zip(deep_supervision_weights(3), heads))
    assert loss(stacked, target).item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------ augmentation
def _transform_case(params: SampleParams, patch=(6, 12, 14), seed=0):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(40, 60, 60)).astype(np.float32)
    centre = np.array([19.5, 29.0, 30.5])
    lo, hi = source_box(params, centre, patch)
    crop = src[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    params.centre_in_source = tuple(centre - lo)
    return crop, params


def test_rotation_and_scaling_match_scipy_affine_transform_on_an_anisotropic_grid():
    spacing = np.array([3.0, 1.0, 1.0])
    rotation = rotation_matrix_zyx(np.radians([20.0, -10.0, 25.0]))
    matrix = 1.25 * np.diag(1 / spacing) @ rotation @ np.diag(spacing)
    patch = (6, 12, 14)
    crop, params = _transform_case(SampleParams(matrix=tuple(map(tuple, matrix))), patch)
    image, _ = spatial_transform(torch.from_numpy(crop)[None], torch.zeros((1, *crop.shape), dtype=torch.uint8),
                                 params, patch, 2)
    c_out = (np.array(patch) - 1) / 2
    expected = ndimage.affine_transform(crop, matrix, offset=np.array(params.centre_in_source) - matrix @ c_out,
                                        output_shape=patch, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=2e-4)


def test_source_box_holds_every_sample_point_even_with_elastic_deformation():
    rng = np.random.default_rng(3)
    cfg = AugmentConfig(p_rotation=1, p_scale=1, p_elastic=1)
    for _ in range(5):
        params = draw_params(rng, cfg, (8, 16, 16), (2.5, 1.0, 1.0))
        centre = np.array([20.0, 30.5, 29.5])
        lo, hi = source_box(params, centre, (8, 16, 16))
        ones = torch.ones((1, *(hi - lo)), dtype=torch.float32)
        params.centre_in_source = tuple(centre - lo)
        out, _ = spatial_transform(ones, torch.zeros_like(ones, dtype=torch.uint8), params, (8, 16, 16), 2)
        assert out.min().item() > 1 - 1e-5  # never read the zero padding outside the crop


def test_labels_stay_binary_and_match_thresholded_linear_interpolation():
    z, y, x = np.indices((30, 40, 40))
    ball = (((z - 15) / 8.0) ** 2 + ((y - 20) / 12.0) ** 2 + ((x - 20) / 9.0) ** 2 < 1).astype(np.uint8)
    matrix = np.diag([1.0, 1.0, 1.0]) @ rotation_matrix_zyx(np.radians([30.0, 0.0, 0.0]))
    params = SampleParams(matrix=tuple(map(tuple, matrix)), centre_in_source=(14.5, 19.5, 19.5))
    _, label = spatial_transform(torch.zeros((1, 30, 40, 40)), torch.from_numpy(ball)[None], params, (30, 40, 40), 2)
    expected = ndimage.affine_transform(ball.astype(float), matrix, offset=np.array([14.5, 19.5, 19.5]) - matrix @
                                        np.array([14.5, 19.5, 19.5]), order=1, mode="constant") > 0.5
    assert set(np.unique(label.numpy())) <= {0, 1}
    assert np.mean(label[0].numpy().astype(bool) != expected) < 0.002
    assert abs(int(label.sum()) - int(ball.sum())) / ball.sum() < 0.05


def test_identity_parameters_return_the_crop_unchanged_and_mirroring_flips_image_and_label_together():
    rng = np.random.default_rng(4)
    crop = torch.from_numpy(rng.normal(size=(1, 4, 6, 8)).astype(np.float32))
    label = torch.from_numpy((rng.random((1, 4, 6, 8)) > 0.5).astype(np.uint8))
    image, lab = spatial_transform(crop, label, SampleParams(), (4, 6, 8), 2)
    assert torch.equal(image, crop) and torch.equal(lab, label)
    from HepatoblastomaSegLib.train.augment import augment_sample

    out_i, out_l = augment_sample(crop, label, SampleParams(mirror_zyx=(True, False, True)), (4, 6, 8), 2)
    assert torch.equal(out_i, torch.flip(crop, (1, 3))) and torch.equal(out_l, torch.flip(label, (1, 3)))


def test_blur_matches_scipy_gaussian_filter():
    rng = np.random.default_rng(5)
    data = rng.normal(size=(9, 20, 22)).astype(np.float32)
    out = gaussian_blur(torch.from_numpy(data)[None], 0.8)[0].numpy()
    expected = ndimage.gaussian_filter(data.astype(np.float64), 0.8, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    in_plane = gaussian_blur(torch.from_numpy(data)[None], 0.8, axes=(1, 2))[0].numpy()
    np.testing.assert_allclose(in_plane, ndimage.gaussian_filter(data.astype(np.float64), (0, 0.8, 0.8),
                                                                 mode="nearest", truncate=4.0), atol=1e-5)


def test_intensity_transforms_keep_what_nnunet_keeps():
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.normal(2.0, 1.5, size=(1, 6, 16, 16)).astype(np.float32))
    gamma = intensity_transforms(x, SampleParams(gamma=1.4))
    assert gamma.mean().item() == pytest.approx(x.mean().item(), abs=1e-4)
    assert gamma.std().item() == pytest.approx(x.std().item(), rel=1e-4)
    assert not torch.allclose(gamma, x, atol=1e-2)
    inverted = intensity_transforms(x, SampleParams(gamma_inverted=0.7))
    assert inverted.mean().item() == pytest.approx(x.mean().item(), abs=1e-4)
    contrast = intensity_transforms(x, SampleParams(contrast=1.3))
    assert contrast.min() >= x.min() and contrast.max() <= x.max()
    assert torch.allclose(intensity_transforms(x, SampleParams(brightness=0.8)), x * 0.8)
    noisy = intensity_transforms(x, SampleParams(noise_std=0.05, noise_seed=7))
    assert torch.equal(noisy, intensity_transforms(x, SampleParams(noise_std=0.05, noise_seed=7)))
    assert (noisy - x).std().item() == pytest.approx(0.05, rel=0.15)
    low = intensity_transforms(x, SampleParams(low_resolution_zoom=0.5))
    assert low.shape == x.shape and low.std() < x.std()


def test_draw_params_probabilities_ranges_and_thick_slice_mode():
    rng = np.random.default_rng(8)
    cfg = AugmentConfig()
    draws = [draw_params(rng, cfg, (8, 32, 32), (4.0, 1.0, 1.0)) for _ in range(2000)]
    mirrored = np.mean([p.mirror_zyx[1] for p in draws])
    assert 0.46 < mirrored < 0.54
    assert 0.18 < np.mean([p.elastic is not None for p in draws]) < 0.22
    assert 0.32 < np.mean([p.matrix is not None for p in draws]) < 0.40  # rotation or scaling: 1 - 0.8^2
    thick = [draw_params(rng, AugmentConfig(p_rotation=1, p_scale=0), (8, 32, 32), (4.0, 1.0, 1.0),
                         in_plane_rotation_only=True) for _ in range(50)]
    for p in thick:
        m = np.asarray(p.matrix)
        np.testing.assert_allclose(m[0], [1, 0, 0], atol=1e-12)   # the slice axis is never rotated
        np.testing.assert_allclose(np.degrees(np.arccos(np.clip(m[1, 1], -1, 1))), abs(np.degrees(
            np.arctan2(m[2, 1], m[1, 1]))), atol=1e-6)
        assert abs(np.degrees(np.arctan2(m[2, 1], m[1, 1]))) <= 30 + 1e-9
    off = draw_params(rng, AugmentConfig(enabled=False), (8, 32, 32), (4.0, 1.0, 1.0))
    assert not off.spatial and off.gamma is None and off.mirror_zyx == (False, False, False)


# ------------------------------------------------------------------------------------------------ sampling
def test_exactly_a_third_of_the_samples_are_foreground_centred():
    flags = [is_foreground_sample(g, 1 / 3) for g in range(300)]
    assert sum(flags) == 100 and all(flags[i] == (i % 3 == 2) for i in range(300))
    assert BatchLayout.for_rank(2, 1, 2) == BatchLayout(2, 1, 1)
    assert [BatchLayout.for_rank(5, r, 2).local_batch for r in range(2)] == [3, 2]


def test_crop_padded_matches_numpy_pad():
    a = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    padded = np.pad(a, 3, constant_values=-1)
    out = crop_padded(a, (-2, 1, 3), (3, 7, 9), value=-1)
    np.testing.assert_array_equal(out, padded[1:6, 4:10, 6:12])


@pytest.fixture
def tiny_cache(tmp_path):
    """A preprocessing cache with three cases (one without tumour) written directly, without preprocessing."""
    plans = make_plans()
    cache = PreprocessedCache(tmp_path / "cache", plans)
    geometry = Geometry((30, 24, 10), (1.5, 1.5, 4.0), (0.0, 0.0, 0.0))
    entries = []
    rng = np.random.default_rng(0)
    for i, has_tumour in enumerate((True, True, False)):
        for name in ("image", "tumor"):
            (tmp_path / f"c{i}.{name}").write_bytes(b"x")
        entry = CaseEntry(f"c{i}", tmp_path / f"c{i}.image", tmp_path / f"c{i}.tumor")
        label = np.zeros((10, 24, 30), np.uint8)
        if has_tumour:
            label[3:6, 2 + 4 * i:6 + 4 * i, 20:25] = 1   # a small tumour off-centre
        image = rng.normal(size=label.shape).astype(np.float32) + 2 * label
        cache.store(entry, CachedCase(entry.case, image, label, geometry, geometry, []))
        entries.append(entry)
    return cache, entries


def _patches(cache, entries, layout, augment=None):
    return TrainPatches(cache, entries, patch_size_zyx=(8, 16, 16), num_classes=2, spacing_mm_zyx=(4.0, 1.5, 1.5),
                        iters_per_epoch=15, layout=layout, seed=3, augment=augment or AugmentConfig(enabled=False))


def test_patches_forced_foreground_hold_tumour_and_samples_do_not_depend_on_the_ranks(tiny_cache):
    cache, entries = tiny_cache
    single = _patches(cache, entries, BatchLayout.for_rank(2, 0, 1))
    samples = [single[(1, i)] for i in range(len(single))]
    forced = [s for s in samples if s.foreground]
    assert len(forced) == len(samples) // 3
    assert all(s.label.sum() > 0 and s.case != "c2" for s in forced)
    assert all(tuple(s.image.shape[1:]) == (8, 16, 16) for s in samples)
    assert torch.equal(single[(1, 4)].image, samples[4].image)                   # deterministic
    assert not torch.equal(single[(2, 4)].image, samples[4].image)               # the epoch changes the draw
    for rank in range(2):
        shard = _patches(cache, entries, BatchLayout.for_rank(2, rank, 2))
        for i in range(len(shard)):
            mine, reference = shard[(1, i)], samples[2 * i + rank]
            assert torch.equal(mine.image, reference.image) and mine.params == reference.params


def test_augmented_samples_carry_the_source_region_they_need(tiny_cache):
    cache, entries = tiny_cache
    patches = _patches(cache, entries, BatchLayout.for_rank(2, 0, 1),
                       AugmentConfig(p_rotation=1.0, p_scale=1.0, p_elastic=1.0))
    from HepatoblastomaSegLib.train.augment import augment_batch

    batch = [patches[(0, i)] for i in range(4)]
    assert all(s.image.shape[1:] != (8, 16, 16) for s in batch)   # a larger region for the rotated patch
    image, label = augment_batch(batch, (8, 16, 16), 2, "cpu")
    assert image.shape == (4, 1, 8, 16, 16) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= {0, 1}


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoints_are_safetensors_plus_weights_only_state_and_only_the_latest_is_kept(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, affine=True))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99, nesterov=True)
    net(torch.randn(1, 1, 5, 5, 5)).sum().backward()
    opt.step()
    for epoch in (1, 2):
        state = {"epoch": epoch, "optimizer": opt.state_dict(), "rng": ckpt.capture_rng(), "history": [
            {"epoch": 1, "val_dice": None, "lr": 0.01}], "best": {"epoch": None, "dice": None}}
        folder = ckpt.save_checkpoint(tmp_path, epoch, ckpt.training_tensors(net), state)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-e00002"]
    assert ckpt.latest_checkpoint(tmp_path) == folder
    loaded = torch.load(folder / "state.pt", weights_only=True)      # no pickled objects inside
    assert loaded["epoch"] == 2 and loaded["optimizer"]["param_groups"][0]["nesterov"] is True
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    assert ckpt.state_sha256(weights) == ckpt.state_sha256(ckpt.training_tensors(net))
    # A half-written staging folder and a pointer to a missing folder do not hide the good checkpoint.
    (tmp_path / ".checkpoint-x.partial").mkdir()
    (tmp_path / "latest_checkpoint.txt").write_text("checkpoint-e00009\n")
    assert ckpt.latest_checkpoint(tmp_path) == folder


def test_rng_states_round_trip():
    state = ckpt.capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(torch.load(_save(state), weights_only=True))
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def _save(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


# ------------------------------------------------------------------------------------------------ schedule
def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_plateau_reduces_by_factor_after_patience_and_resumes_exactly():
    schedule = LearningRateSchedule(_optimizer(), kind="plateau", initial_lr=0.01, patience_epochs=3, factor=0.2,
                                    ema_alpha=0.0, threshold=1e-3)
    lrs = []
    for epoch, dice in enumerate([0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3005, 0.3, 0.3]):
        schedule.start_epoch(epoch)
        lrs.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.end_epoch(dice)
    assert lrs[:6] == [0.01] * 6 and lrs[6] == pytest.approx(0.002)
    clone = LearningRateSchedule(_optimizer(), kind="plateau", initial_lr=0.01, patience_epochs=3, factor=0.2,
                                 ema_alpha=0.0)
    clone.load_state_dict(torch.load(_save(schedule.state_dict()), weights_only=True))
    for s in (schedule, clone):
        for dice in (0.3, 0.3, 0.3):
            s.end_epoch(dice)
    assert schedule.lr == clone.lr == pytest.approx(0.01 * 0.2 ** 3)


def test_poly_schedule():
    schedule = LearningRateSchedule(_optimizer(), kind="poly", initial_lr=0.01, epochs=100)
    assert schedule.start_epoch(0) == pytest.approx(0.01)
    assert schedule.start_epoch(50) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert schedule.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)


# ------------------------------------------------------------------------------------------------ validation
def test_validation_dice_matches_medpy_and_is_nan_when_both_empty():
    rng = np.random.default_rng(9)
    a = rng.random((6, 20, 20)) > 0.6
    b = rng.random((6, 20, 20)) > 0.5
    pred = torch.from_numpy(a.astype(np.int64))
    ref = torch.from_numpy(b.astype(np.uint8))
    assert dice_per_class(pred, ref, 2)[0] == pytest.approx(dc(a, b))
    assert math.isnan(dice_per_class(torch.zeros(3, 3, 3), torch.zeros(3, 3, 3), 2)[0])
    result = ValidationResult(["a", "b", "c"], np.array([[0.5], [np.nan], [0.7]]))
    assert result.mean_dice == pytest.approx(0.6)


def test_sliding_window_validation_keeps_the_image_shape():
    plans = make_plans()
    from HepatoblastomaSegLib.network import build_network

    net = build_network(plans, width=0.125).eval()
    labels = predict_labels(net, torch.randn(5, 20, 40), plans.patch_size_zyx, device=torch.device("cpu"),
                            autocast_dtype=None)
    assert labels.shape == (5, 20, 40) and set(labels.unique().tolist()) <= {0, 1}


def test_config_reports_every_bad_option_at_once():
    with pytest.raises(ConfigError) as info:
        TrainConfig("d", "pet", "o", epochs=0, width=-1, val_fraction=1.5, amp="fp8").validated()
    text = str(info.value)
    for word in ("modality", "epochs", "width", "validation fraction", "amp"):
        assert word in text
    assert TrainConfig("d", "ct", "o").validated().val_fraction == 0.2
    assert TrainConfig("d", "ct", "o").validated().width == 1.0  # the paper's width unless told (or --init-weights)
    assert TrainConfig("d", "mri", "o").total_epochs == 1000 and TrainConfig("d", "ct", "o").total_epochs == 5000


def test_worker_processes_deliver_the_same_batches_as_the_main_process(tiny_cache):
    from HepatoblastomaSegLib.train.data import make_loader

    cache, entries = tiny_cache
    patches = _patches(cache, entries, BatchLayout.for_rank(2, 0, 1), AugmentConfig())
    batches = {}
    for workers in (0, 2):
        loader, sampler = make_loader(patches, workers=workers, pin_memory=False)
        sampler.set_epoch(3)
        batches[workers] = [[(s.case, s.image, s.params.noise_seed) for s in batch] for batch in loader]
    assert len(batches[0]) == 15
    for one, other in zip(batches[0], batches[2]):
        for (case_a, image_a, seed_a), (case_b, image_b, seed_b) in zip(one, other):
            assert case_a == case_b and seed_a == seed_b and torch.equal(image_a, image_b)
