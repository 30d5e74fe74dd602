"""Inference building blocks: TTA, entropy, postprocessing, summary figures, output files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import slicerio
import SimpleITK as sitk
import torch

from HepatoblastomaSegLib.infer.outputs import is_finished, write_prediction
from HepatoblastomaSegLib.infer.postprocess import keep_largest_component, remove_small_components
from HepatoblastomaSegLib.infer.result import MAX_ENTROPY_2CLASS_NATS, Prediction
from HepatoblastomaSegLib.infer.summary import largest_diameter_mm, tumor_volume_ml
from HepatoblastomaSegLib.infer.tta import ALL_FLIPS, SoftmaxPredictor
from HepatoblastomaSegLib.infer.uncertainty import ENTROPY_STEP_NATS, entropy_nats, round_to_step
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume
from HepatoblastomaSegLib.terminology import HEPATOBLASTOMA


class _AsymmetricNet(torch.nn.Module):
    """A fixed, deliberately non-symmetric convolution: flips change its output unless TTA averages them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv(x) * 3.0


def test_all_flips_are_the_8_axis_combinations():
    assert len(ALL_FLIPS) == 8 and len(set(ALL_FLIPS)) == 8 and () in ALL_FLIPS
    assert all(set(f) <= {2, 3, 4} for f in ALL_FLIPS)


@pytest.mark.parametrize("axes", [(2,), (3,), (4,), (2, 4), (2, 3, 4)])
def test_tta_output_is_symmetric_under_flips(axes):
    net = _AsymmetricNet().eval()
    x = torch.randn(1, 1, 6, 8, 10, generator=torch.Generator().manual_seed(1))
    tta = SoftmaxPredictor(net, ALL_FLIPS)
    with torch.inference_mode():
        direct = tta(x)
        flipped = torch.flip(tta(torch.flip(x, axes)), axes)
        plain = SoftmaxPredictor(net, ((),))(x)
        plain_flipped = torch.flip(SoftmaxPredictor(net, ((),))(torch.flip(x, axes)), axes)
    torch.testing.assert_close(direct, flipped, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, plain_flipped, atol=1e-3)  # the net itself is not symmetric
    torch.testing.assert_close(direct.sum(1), torch.ones_like(direct[:, 0]), atol=1e-5, rtol=0)


def test_tta_averages_probabilities_not_logits():
    net = _AsymmetricNet().eval()
    x = torch.randn(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = sum(torch.flip(torch.softmax(net(torch.flip(x, f) if f else x), 1), f) if f
                       else torch.softmax(net(x), 1) for f in ALL_FLIPS) / 8
        torch.testing.assert_close(SoftmaxPredictor(net)(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_forward_batch,calls", [(None, 8), (2, 8), (4, 4), (8, 2), (16, 1)])
def test_flips_batched_into_fewer_network_calls_give_the_same_probabilities(max_forward_batch, calls):
    net = _AsymmetricNet().eval()
    seen = []
    net.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    x = torch.randn(2, 1, 6, 8, 10, generator=torch.Generator().manual_seed(4))  # a batch of 2 windows
    with torch.inference_mode():
        reference = SoftmaxPredictor(net, ALL_FLIPS)(x)
        seen.clear()
        batched = SoftmaxPredictor(net, ALL_FLIPS, max_forward_batch=max_forward_batch)(x)
    assert len(seen) == calls and sum(seen) == 16  # 2 windows x 8 flips, in fewer calls
    torch.testing.assert_close(batched, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("flips", [ALL_FLIPS, ((),)])
def test_a_short_window_batch_padded_to_full_size_gives_the_same_probabilities(flips):
    net = _AsymmetricNet().eval()
    seen = []
    net.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    x = torch.randn(3, 1, 6, 8, 10, generator=torch.Generator().manual_seed(5))  # 3 windows of a batch of 4
    with torch.inference_mode():
        reference = SoftmaxPredictor(net, flips, max_forward_batch=8)(x)
        seen.clear()
        padded = SoftmaxPredictor(net, flips, max_forward_batch=8, pad_windows_to=4)(x)
    assert padded.shape == reference.shape == (3, 2, 6, 8, 10)
    assert set(seen) == {8 if len(flips) > 1 else 4}  # every call has the full batch's shape
    torch.testing.assert_close(padded, reference, atol=1e-6, rtol=0)


def test_entropy_rounded_to_its_storage_step_stays_within_half_a_step_and_in_range():
    p1 = torch.rand(50_000, generator=torch.Generator().manual_seed(5))
    p1[:4] = torch.tensor([0.0, 1.0, 0.5, 1e-9])
    h = entropy_nats(torch.stack([1 - p1, p1]))
    rounded = round_to_step(h.clone())
    assert (rounded - h).abs().max() <= ENTROPY_STEP_NATS / 2
    steps = rounded / ENTROPY_STEP_NATS
    assert torch.equal(steps, steps.round())  # exact multiples: the low mantissa bits are zero, so gzip compresses
    assert rounded.min() >= 0 and rounded.max() <= MAX_ENTROPY_2CLASS_NATS
    assert rounded[0] == 0 and rounded[3] == 0  # certain voxels are exactly 0


def test_entropy_matches_scipy_and_is_bounded():
    rng = np.random.default_rng(3)
    p1 = rng.random((5, 6, 7)).astype(np.float32)
    p1[0, 0, :3] = [0.0, 1.0, 0.5]  # certain voxels and the most uncertain one
    probs = np.stack([1 - p1, p1])
    h = entropy_nats(probs)
    reference = scipy.stats.entropy(probs.astype(np.float64), axis=0)  # natural log by default
    np.testing.assert_allclose(h, reference, atol=1e-6)
    assert h.dtype == np.float32 and h.min() >= 0 and h.max() <= MAX_ENTROPY_2CLASS_NATS + 1e-6
    assert h[0, 0, 0] == 0 and h[0, 0, 1] == 0 and h[0, 0, 2] == pytest.approx(math.log(2), abs=1e-6)


def test_largest_component_and_small_components():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:5, 1:5, 1:5] = 1  # 64 voxels
    mask[7:9, 7:9, 7:9] = 1  # 8 voxels
    mask[6, 6, 6] = 1  # touches the small cube by a corner: 26-connected to it
    assert keep_largest_component(mask).sum() == 64
    assert remove_small_components(mask, min_volume_ml=0.01, voxel_volume_ml=0.001).sum() == 64  # 9 voxels < 10
    assert remove_small_components(mask, min_volume_ml=0.009, voxel_volume_ml=0.001).sum() == 73
    assert keep_largest_component(np.zeros_like(mask)).sum() == 0


@pytest.mark.parametrize("seed,density", [(4, 0.03), (5, 0.01), (6, 0.3)])
def test_largest_diameter_brute_force_on_oblique_grid(oblique_geometry, seed, density):
    rng = np.random.default_rng(seed)
    array = (rng.random(oblique_geometry.shape_zyx) < density).astype(np.uint8)
    array[2:4, 5:9, 6:12] = 1
    volume = Volume(array, oblique_geometry)
    points = np.argwhere(array)[:, ::-1].astype(float)
    matrix = oblique_geometry.index_to_physical_matrix()
    mm = points @ matrix[:3, :3].T + matrix[:3, 3]
    brute = max(np.linalg.norm(mm[i] - mm[j]) for i in range(len(mm)) for j in range(i + 1, len(mm)))
    assert largest_diameter_mm(volume) == pytest.approx(brute, rel=1e-9)
    assert tumor_volume_ml(volume) == pytest.approx(array.sum() * 0.7 * 0.8 * 2.5 / 1000)


def test_largest_diameter_of_a_ball_is_its_diameter():
    geometry = Geometry((61, 61, 25), (0.5, 0.5, 1.25), (0, 0, 0))
    z, y, x = np.indices(geometry.shape_zyx)
    ball = ((x - 30) * 0.5) ** 2 + ((y - 30) * 0.5) ** 2 + ((z - 12) * 1.25) ** 2 <= 12.0 ** 2
    assert largest_diameter_mm(Volume(ball.astype(np.uint8), geometry)) == pytest.approx(24.0, abs=0.6)
    assert largest_diameter_mm(Volume(np.zeros(geometry.shape_zyx, np.uint8), geometry)) == 0.0


def _prediction(geometry) -> Prediction:
    z, y, x = np.indices(geometry.shape_zyx)
    mask = (((x - 12) ** 2 + (y - 10) ** 2) < 30).astype(np.uint8)
    entropy = np.full(geometry.shape_zyx, 0.1, np.float32)
    return Prediction(Volume(mask, geometry), Volume(entropy, geometry),
                      {"tumor_volume_ml": 1.0, "model_name": "test"})


@pytest.mark.parametrize("fmt", ["nifti", "nrrd"])
def test_outputs_keep_geometry_and_resume_check(tmp_path, oblique_geometry, fmt):
    prediction = _prediction(oblique_geometry)
    summary_path = write_prediction(prediction, tmp_path / "case", fmt=fmt)
    summary = json.loads(summary_path.read_text())
    seg_path = tmp_path / "case" / summary["outputs"]["segmentation"]["file"]
    ent_path = tmp_path / "case" / summary["outputs"]["entropy"]["file"]
    seg = read_volume(seg_path)
    ent = read_volume(ent_path)
    np.testing.assert_array_equal(seg.array, prediction.mask.array)
    assert ent.array.dtype == np.float32
    for volume in (seg, ent):
        assert volume.geometry.mismatches(oblique_geometry, spacing_tol_mm=1e-6, origin_tol_mm=1e-6) == []
    assert is_finished(tmp_path / "case")
    ent_path.write_bytes(ent_path.read_bytes()[:-10])  # a damaged output is not "finished"
    assert not is_finished(tmp_path / "case")
    assert not is_finished(tmp_path / "nothing")


@pytest.mark.parametrize("fmt", ["nifti", "nrrd"])
def test_review_masks_are_written_beside_the_result_and_cleared_when_absent(tmp_path, oblique_geometry, fmt):
    import dataclasses

    from HepatoblastomaSegLib.errors import GeometryError

    prediction = _prediction(oblique_geometry)
    removed = np.zeros(oblique_geometry.shape_zyx, np.uint8)
    removed[1:3, 2:5, 3:7] = 1
    liver = np.zeros_like(removed)
    liver[2:, 4:, 4:] = 1
    masks = {"anchor_removed": prediction.mask.with_array(removed), "liver": prediction.mask.with_array(liver)}
    folder = tmp_path / "case"
    summary = json.loads(write_prediction(dataclasses.replace(prediction, review_masks=masks), folder,
                                          fmt=fmt).read_text())
    paths = {key: folder / summary["outputs"][key]["file"] for key in masks}
    assert {p.name for p in paths.values()} == ({"anchor_removed.nii.gz", "liver_mask.nii.gz"} if fmt == "nifti"
                                                 else {"anchor_removed.nrrd", "liver_mask.nrrd"})
    for key, path in paths.items():
        back = read_volume(path)
        np.testing.assert_array_equal(back.array, masks[key].array)
        assert back.geometry.mismatches(oblique_geometry, spacing_tol_mm=1e-6, origin_tol_mm=1e-6) == []
    assert is_finished(folder)
    paths["anchor_removed"].write_bytes(paths["anchor_removed"].read_bytes()[:-10])
    assert not is_finished(folder)  # checked like the other outputs
    # A rerun without them (or with an empty one) leaves no stale file that would claim otherwise.
    empty = dataclasses.replace(prediction, review_masks={"anchor_removed": prediction.mask.with_array(0 * removed)})
    for again in (prediction, empty):
        summary = json.loads(write_prediction(again, folder, fmt=fmt).read_text())
        assert not set(masks) & set(summary["outputs"]) and is_finished(folder)
        assert not any(p.exists() for p in paths.values())
    # A review mask on another grid is refused before anything in the folder changes.
    other = Volume(liver[:, :, :-1].copy(), Geometry(tuple(s - (i == 0) for i, s in enumerate(oblique_geometry.size)),
                                                     oblique_geometry.spacing_mm, oblique_geometry.origin_mm,
                                                     oblique_geometry.direction))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(GeometryError):
        write_prediction(dataclasses.replace(prediction, review_masks={"liver": other}), folder, fmt=fmt)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_seg_nrrd_is_read_by_slicerio(tmp_path, oblique_geometry):
    prediction = _prediction(oblique_geometry)
    write_prediction(prediction, tmp_path, fmt="nrrd")
    seg = slicerio.read_segmentation(str(tmp_path / "segmentation.seg.nrrd"))
    (segment,) = seg["segments"]
    assert segment["name"] == "Hepatoblastoma" and segment["labelValue"] == 1
    assert segment["color"] == pytest.approx(list(HEPATOBLASTOMA.color_rgb))
    assert segment["terminology"]["type"] == ["SCT", "108369006", "Neoplasm"]
    # slicerio voxels are [i, j, k]; ijkToLPS equals our index-to-physical matrix.
    np.testing.assert_array_equal(np.transpose(seg["voxels"], (2, 1, 0)), prediction.mask.array)
    np.testing.assert_allclose(seg["ijkToLPS"], oblique_geometry.index_to_physical_matrix(), atol=1e-6)
    image = sitk.ReadImage(str(tmp_path / "segmentation.seg.nrrd"))
    assert image.GetMetaData("Segment0_Name") == "Hepatoblastoma"


@pytest.mark.parametrize("voxels_zyx", [
    [(3, 4, 5), (3, 4, 9)],                                   # two voxels of one row
    [(3, 4, 5), (3, 6, 5), (3, 9, 2), (3, 2, 7), (3, 8, 8)],  # one slice: coplanar, Qhull refuses; one voxel per row
    [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4), (5, 5, 5)],  # a line
])
def test_largest_diameter_of_flat_and_tiny_masks_is_the_brute_force_one(oblique_geometry, voxels_zyx):
    array = np.zeros(oblique_geometry.shape_zyx, np.uint8)
    array[tuple(np.array(voxels_zyx).T)] = 1
    matrix = oblique_geometry.index_to_physical_matrix()
    mm = np.array(voxels_zyx)[:, ::-1].astype(float) @ matrix[:3, :3].T + matrix[:3, 3]
    brute = max(np.linalg.norm(a - b) for a in mm for b in mm)
    assert largest_diameter_mm(Volume(array, oblique_geometry)) == pytest.approx(brute, rel=1e-12)
