"""Consensus: majority vote against SimpleITK LabelVoting, STAPLE, and the ``hbseg consensus`` command."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.evaluate import consensus as cons
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_volume

OBLIQUE = Geometry((14, 12, 8), (0.8, 0.75, 2.5), (-120.0, 35.5, 10.0),
                   (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def random_masks(n: int, seed: int = 0, shape=(8, 12, 14)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random(shape) < 0.5).astype(np.uint8) for _ in range(n)]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_majority_vote_equals_simpleitk_label_voting(n):
    masks = random_masks(n, seed=n)
    expected = sitk.GetArrayFromImage(sitk.LabelVoting([sitk.GetImageFromArray(m) for m in masks], 0))
    result = cons.majority_vote(masks)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)


def test_two_of_three_and_even_ties():
    a, b, c = (np.array([v], dtype=np.uint8).reshape(1, 1, -1) for v in ([1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]))
    assert cons.majority_vote([a, b, c]).ravel().tolist() == [1, 0, 0, 0]   # 2 of 3
    d = np.array([1, 1, 1, 0], dtype=np.uint8).reshape(1, 1, -1)
    # votes per voxel with four raters: 3, 2, 2, 0 -> ties (2 of 4) go to background by default
    assert cons.majority_vote([a, b, c, d]).ravel().tolist() == [1, 0, 0, 0]
    assert cons.majority_vote([a, b, c, d], min_votes=2).ravel().tolist() == [1, 1, 1, 0]
    assert cons.majority_vote([a, b, c, d], min_votes=1).ravel().tolist() == [1, 1, 1, 0]
    assert cons.majority_vote([a, b, c, d], min_votes=4).ravel().tolist() == [0, 0, 0, 0]
    with pytest.raises(ConfigError, match="min_votes must lie between 1 and the number of masks"):
        cons.majority_vote([a, b, c], min_votes=4)
    with pytest.raises(ConfigError, match="at least 2 masks"):
        cons.majority_vote([a])


def test_staple_is_a_different_estimator():
    masks = random_masks(3, seed=9)
    same, probability, sensitivity, specificity = cons.staple([masks[0]] * 3)
    np.testing.assert_array_equal(same, masks[0])
    assert len(sensitivity) == 3 and len(specificity) == 3
    result, probability, _, _ = cons.staple(masks)
    assert set(np.unique(result).tolist()) <= {0, 1}
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    np.testing.assert_array_equal(result, (probability >= 0.5).astype(np.uint8))
    with pytest.raises(ConfigError, match="min_votes applies to the majority vote only"):
        cons.build_consensus(masks, method="staple", min_votes=2)


def write_masks(tmp_path, masks, geometry=OBLIQUE):
    paths = []
    for i, mask in enumerate(masks):
        paths.append(write_volume(Volume(mask, geometry), tmp_path / f"R{i + 1}.nii.gz"))
    return [str(p) for p in paths]


def test_cli_consensus_writes_the_vote_on_the_input_grid(tmp_path, capsys):
    masks = random_masks(3, seed=1)
    paths = write_masks(tmp_path, masks)
    out = tmp_path / "out" / "consensus.nrrd"
    assert main(["consensus", *paths, "-o", str(out)]) == 0
    result = read_volume(out)
    np.testing.assert_array_equal(result.array, cons.majority_vote(masks))
    assert result.geometry.matches(OBLIQUE)
    assert ">= 2 of 3 votes" in capsys.readouterr().out
    assert main(["consensus", *paths, "--method", "staple", "-o", str(tmp_path / "staple.nii.gz")]) == 0


def test_cli_consensus_refuses_bad_input(tmp_path, capsys):
    masks = random_masks(3, seed=2)
    paths = write_masks(tmp_path, masks)
    other = Geometry(OBLIQUE.size, (0.8, 0.75, 3.0), OBLIQUE.origin_mm, OBLIQUE.direction)
    moved = str(write_volume(Volume(masks[2], other), tmp_path / "moved.nii.gz"))
    assert main(["consensus", paths[0], paths[1], moved, "-o", str(tmp_path / "c.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "moved.nii.gz" in err and "spacing" in err and "does not lie on the grid" in err
    assert not (tmp_path / "c.nii.gz").exists()

    labels = masks[0].copy()
    labels[0, 0, :3] = [2, 3, 1]
    bad = str(write_volume(Volume(labels, OBLIQUE), tmp_path / "labels.nii.gz"))
    assert main(["consensus", paths[0], bad, "-o", str(tmp_path / "c.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "labels.nii.gz" in err and "binary" in err and "2, 3" in err

    assert main(["consensus", paths[0], "-o", str(tmp_path / "c.nii.gz")]) == 2
    assert "at least 2 masks" in capsys.readouterr().err
