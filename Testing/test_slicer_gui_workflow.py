"""What "Segment tumor" does, without Qt, on the real MRML classes (slicer-core, headless) and the real
``hbseg segment`` in a background process on a tiny model: the scene is untouched until the run finished, the
result is exactly what the network gives in-process, cancel and failure leave the scene as it was, and a failure
is explained by its cause and the next step."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import SimpleITK as sitk  # noqa: E402

from slicer_env import add_volume_node, mrml, slicer_env  # noqa: E402,F401  (slicer_env is a fixture)

from HepatoblastomaSegLib.bundle import load_bundle  # noqa: E402
from HepatoblastomaSegLib.cli import build_parser  # noqa: E402
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions  # noqa: E402
from HepatoblastomaSegLib.io import Geometry  # noqa: E402
from HepatoblastomaSegRunner import models  # noqa: E402
from HepatoblastomaSegMRML.background import SegmentJob, SegmentRequest, scene_node_ids  # noqa: E402
from HepatoblastomaSegRunner.failures import explain_failure  # noqa: E402
from HepatoblastomaSegRunner.process import RunState  # noqa: E402
from HepatoblastomaSegMRML.volumes import geometry_of_node, node_grid, segment_mask, volume_from_node  # noqa: E402

from conftest import oblique_direction  # noqa: E402
from helpers_synthetic import synthetic_case  # noqa: E402
from tiny_models import tiny_bundle  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("models"))


def _ct(scene, modality="ct"):
    """A CT (or MRI) phantom on an oblique, left-handed, anisotropic grid, as a volume node."""
    image, _, _ = synthetic_case(modality, shape_zyx=(8, 36, 41), spacing_mm_xyz=(1.7, 1.4, 4.5),
                                 direction=oblique_direction(flip_x=True), origin_mm=(12.5, -40.0, 7.25))
    return add_volume_node(scene, image, f"phantom {modality}")


def test_request_arguments_are_what_the_hbseg_parser_expects(bundle):
    request = SegmentRequest(model_path=bundle, modality="mri", device="cuda", tta=False)
    args = build_parser().parse_args(request.cli_args("in.nrrd", "out"))
    assert (args.command, str(args.image), str(args.output)) == ("segment", "in.nrrd", "out")
    assert (args.model, args.modality, args.device, args.tta) == (str(bundle), "mri", "cuda", False)
    assert (args.format, args.progress) == ("nrrd", "json")
    defaults = build_parser().parse_args(SegmentRequest().cli_args("in.nrrd", "out"))
    assert defaults.model is None and defaults.modality is None and defaults.device == "auto" and defaults.tta
    with pytest.raises(ValueError):
        SegmentRequest(device="gpu")
    assert defaults.liver_anchor is None  # left to hbseg segment: on for the bundled CT models
    for asked in (False, True):
        args = build_parser().parse_args(SegmentRequest(liver_anchor=asked).cli_args("in.nrrd", "out"))
        assert args.liver_anchor is asked
    more = SegmentRequest(more=(("overlap", 0.6), ("keep_largest", True)))
    args = build_parser().parse_args(more.cli_args("in.nrrd", "out"))
    assert args.overlap == 0.6 and args.keep_largest and more.options()["overlap"] == 0.6


def test_background_run_gives_the_in_process_result_and_touches_the_scene_only_when_loaded(slicer_env, bundle,
                                                                                             tmp_path):
    scene = slicer_env.scene
    node = _ct(scene)
    job = SegmentJob(node, SegmentRequest(model_path=bundle, modality="ct", device="cpu", tta=False),
                     work_dir=tmp_path / "run", name="case 1")
    before = scene_node_ids(scene)
    job.start()
    # The input file holds the node's voxels on its exact grid (SimpleITK reads it independently).
    written = sitk.ReadImage(str(job.input_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), slicer.util.arrayFromVolume(node))
    assert Geometry(written.GetSize(), written.GetSpacing(), written.GetOrigin(),
                    written.GetDirection()).matches(geometry_of_node(node))
    percents = []
    deadline = time.monotonic() + 120
    while job.state is RunState.RUNNING and time.monotonic() < deadline:
        update = job.poll()
        if update is not None:
            percents.append(update.percent)
        time.sleep(0.02)
    assert job.state is RunState.DONE, job.log_text()
    assert percents == sorted(percents) and percents[-1] == 100
    assert scene_node_ids(scene) == before  # nothing in the scene until the results are loaded

    result = job.load_results()
    assert len(scene_node_ids(scene)) > len(before)
    expected = Predictor(load_bundle(bundle), PredictorOptions(device="cpu", tta=False)).predict(volume_from_node(node))
    mask = segment_mask(result.segmentation_node, result.segment_id, node_grid(node))
    np.testing.assert_array_equal(mask, expected.mask.array)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result.entropy_node), expected.entropy.array, atol=1e-5)
    assert geometry_of_node(result.entropy_node).matches(geometry_of_node(node))
    rows = mrml.table_rows(result.table_node)
    assert rows[0]["model_name"] == "ct-tiny" and rows[0]["device"] == "cpu" and rows[0]["mask"] == \
        "case 1 hepatoblastoma"
    assert rows[0]["volume_ml"] == pytest.approx(expected.mask.array.sum() * node_volume_ml(node))
    assert job.warnings() == []

    job.cleanup()
    assert not job.input_path.exists() and not job.output_dir.exists() and job.log_path.is_file()
    job.cleanup(keep_log=False)
    assert not job.log_path.exists() and not job.work_dir.exists()


def node_volume_ml(node) -> float:
    return geometry_of_node(node).voxel_volume_ml


def test_cancel_kills_the_run_and_leaves_the_scene_unchanged(slicer_env, bundle, tmp_path):
    scene = slicer_env.scene
    node = _ct(scene)
    before = scene_node_ids(scene)
    job = SegmentJob(node, SegmentRequest(model_path=bundle, modality="ct", device="cpu", tta=True),
                     work_dir=tmp_path / "run")
    job.start()
    deadline = time.monotonic() + 60
    while job.poll() is None and job.state is RunState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    pid = job.runner.pid
    assert job.state is RunState.RUNNING, job.log_text()
    assert job.cancel() is True and job.state is RunState.CANCELLED
    assert not (job.output_dir / "summary.json").exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        job.load_results()
    assert scene_node_ids(scene) == before
    import os

    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of its group is left
    job.cleanup(keep_log=False)


def test_an_mri_given_to_the_ct_model_is_refused_with_cause_and_next_step(slicer_env, bundle, tmp_path):
    scene = slicer_env.scene
    node = _ct(scene, "mri")
    entry = models.read_entry(bundle, "imported")
    # Before the run, the GUI warns from the intensities alone.
    guessed = models.guess_modality(slicer.util.arrayFromVolume(node))
    assert guessed == "mri"
    assert models.modality_mismatch(guessed, "ct", entry).startswith("This looks like an MRI (no air below -500 HU), "
                                                                      "but the CT model 'ct-tiny' is selected")
    before = scene_node_ids(scene)
    job = SegmentJob(node, SegmentRequest(model_path=bundle, modality="ct", device="cpu", tta=False),
                     work_dir=tmp_path / "run", python_executable=sys.executable)
    job.start()
    assert job.wait(120) is RunState.FAILED
    assert "does not look like a CT" in job.error_message and job.runner.returncode == 2
    failure = explain_failure(job.error_message, list(job.runner.log_lines), returncode=job.runner.returncode)
    assert failure.cause.startswith("This looks like an MRI, but the CT model is selected")
    assert "Set Modality to T2 MRI" in failure.next_step
    assert scene_node_ids(scene) == before
