"""The whole review loop on a real synthetic case (the library's phantom, small CT), moved onto an oblique,
axis-flipped grid: segment, the reviewer replaces the AI mask by an annotator's, re-score against the three
annotators and their consensus, save, read back with slicerio."""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer")
phantom = pytest.importorskip("HepatoblastomaSegLib.phantom")

import numpy as np  # noqa: E402
import slicerio  # noqa: E402
from scipy import ndimage  # noqa: E402

from slicer_env import (  # noqa: E402,F401  (slicer_env is a fixture)
    add_volume_node,
    import_mask_as_segmentation,
    mrml,
    oblique_flipped_direction,
    replace_segment_voxels,
    sitk_dice,
    sitk_volume_ml,
    slicer_env,
)

from HepatoblastomaSegLib.evaluate.consensus import majority_vote  # noqa: E402
from HepatoblastomaSegLib.infer import Prediction  # noqa: E402
from HepatoblastomaSegLib.io import Geometry, Volume  # noqa: E402

pytestmark = pytest.mark.slicer


def _on_awkward_grid(volume: Volume) -> Volume:
    g = volume.geometry
    return Volume(volume.array, Geometry(g.size, g.spacing_mm, g.origin_mm, oblique_flipped_direction()))


def _entropy_nats(mask: np.ndarray, spacing_mm_zyx) -> np.ndarray:
    """Binary entropy of a probability that falls across the mask surface (1.5 mm scale), float32."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_mm_zyx)
    outside = ndimage.distance_transform_edt(1 - mask, sampling=spacing_mm_zyx)
    p = np.clip(1.0 / (1.0 + np.exp((outside - inside) / 1.5)), 1e-7, 1 - 1e-7)
    return (-(p * np.log(p) + (1 - p) * np.log1p(-p))).astype(np.float32)


def test_review_loop_on_a_phantom_case(slicer_env, tmp_path):
    case = phantom.generate_case("ct", seed=4, index=0, size="small")
    image, tumor = _on_awkward_grid(case.image), _on_awkward_grid(case.tumor)
    raters = {name: _on_awkward_grid(mask) for name, mask in case.raters.items()}
    entropy = Volume(_entropy_nats(tumor.array, tumor.spacing_mm[::-1]), image.geometry)
    scene = slicer_env.scene

    volume_node = add_volume_node(scene, image, case.case_id)
    result = mrml.segment(scene, volume_node, lambda v: Prediction(tumor, entropy, {"model_name": "phantom truth"}))
    annotators = [import_mask_as_segmentation(scene, raters[name], volume_node, name)[0] for name in sorted(raters)]
    consensus = mrml.consensus(scene, annotators, volume_node=volume_node)
    grid = mrml.volumes.node_grid(volume_node)
    vote = mrml.segment_mask(consensus.segmentation_node, consensus.segment_id, grid)
    assert np.array_equal(vote, majority_vote([raters[name].array for name in sorted(raters)]))

    replace_segment_voxels(scene, result.segmentation_node, result.segment_id, raters["R2"], volume_node)
    table = mrml.rescore(scene, result, [*annotators, consensus.segmentation_node])
    rows = {row["reference"]: row for row in mrml.table_rows(table)}
    assert rows[""]["edited"] == 1
    assert rows[""]["volume_ml"] == pytest.approx(sitk_volume_ml(raters["R2"]), rel=1e-9)
    assert rows["R2"]["dice"] == 1.0
    assert rows[mrml.AI_REFERENCE_NAME]["dice"] == pytest.approx(sitk_dice(raters["R2"].array, tumor.array), rel=1e-9)
    assert rows[consensus.segmentation_node.GetName()]["dice"] == pytest.approx(
        sitk_dice(raters["R2"].array, vote), rel=1e-9)
    assert rows[""]["core_entropy_nats"] < rows[""]["boundary_entropy_nats"]

    paths = mrml.save_results(result, tmp_path, case=case.case_id)
    saved = slicerio.read_segmentation(str(paths["segmentation"]))
    assert np.array_equal(saved["voxels"].transpose(2, 1, 0) == 1, raters["R2"].array == 1)
    np.testing.assert_allclose(saved["ijkToLPS"], image.geometry.index_to_physical_matrix(), rtol=0, atol=1e-6)
    ai = slicerio.read_segmentation(str(paths["ai_mask"]))
    assert np.array_equal(ai["voxels"].transpose(2, 1, 0) == 1, tumor.array == 1)
