"""The predictor and `hbseg segment`: geometry kept exactly, deterministic on CPU, cohorts resume and survive bad cases."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import CancelledError, InputError, ModelError
from HepatoblastomaSegLib.infer.outputs import is_finished
from HepatoblastomaSegLib.infer.predictor import (Predictor, PredictorOptions, count_windows, patch_voxel_budget,
                                                  window_batching)
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_dicom_series, write_volume
from HepatoblastomaSegLib.progress import NullProgress, parse_json_line

from conftest import oblique_direction
from helpers_synthetic import synthetic_case
from tiny_models import tiny_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def predictor(bundle_dir) -> Predictor:
    return Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=False))


def _oblique_ct(seed: int = 0) -> Volume:
    image, _, _ = synthetic_case("ct", seed=seed, shape_zyx=(9, 36, 41), spacing_mm_xyz=(1.7, 1.4, 4.5),
                                 direction=oblique_direction(flip_x=True), origin_mm=(12.5, -40.0, 7.25))
    return image


def test_outputs_lie_on_the_input_grid_oblique_flipped_anisotropic(predictor):
    image = _oblique_ct()
    prediction = predictor.predict(image)
    for out in (prediction.mask, prediction.entropy):
        assert out.array.shape == image.array.shape
        assert out.geometry == image.geometry  # the very same grid object values, no re-derivation
    assert prediction.mask.array.dtype == np.uint8 and set(np.unique(prediction.mask.array)) <= {0, 1}
    assert prediction.entropy.array.dtype == np.float32
    assert 0.0 <= prediction.entropy.array.min() and prediction.entropy.array.max() <= math.log(2) + 1e-6
    summary = prediction.summary
    assert summary["tumor_volume_ml"] == pytest.approx(prediction.mask.array.sum() * image.voxel_volume_ml)
    assert summary["model_name"] == "ct-tiny" and summary["device"] == "cpu"
    assert set(summary["seconds"]) >= {"preprocess", "network", "resample"}


def test_cli_on_dicom_series_keeps_geometry(tmp_path, bundle_dir):
    image = _oblique_ct(seed=1)
    right_handed = Volume(image.array, Geometry(image.geometry.size, image.spacing_mm, image.origin_mm,
                                                oblique_direction(flip_x=False)))
    write_dicom_series(right_handed, tmp_path / "dicom", modality="CT", uid_seed="infer")
    assert main(["segment", str(tmp_path / "dicom"), "--model", str(bundle_dir), "--no-tta", "--progress", "none",
                 "-o", str(tmp_path / "out")]) == 0
    mask = read_volume(tmp_path / "out" / "segmentation.nii.gz")
    assert mask.geometry.mismatches(right_handed.geometry) == []
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dicom_series"]["n_slices"] == image.array.shape[0]


def test_same_input_gives_identical_bytes_on_cpu(tmp_path, bundle_dir):
    image = _oblique_ct(seed=2)
    write_volume(image, tmp_path / "ct.nii.gz")
    for run in ("a", "b"):
        assert main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(bundle_dir), "--no-tta",
                     "--progress", "none", "-o", str(tmp_path / run)]) == 0
    for name in ("segmentation.nii.gz", "entropy.nii.gz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_tta_changes_the_result_and_is_recorded(predictor, bundle_dir):
    image = _oblique_ct(seed=3)
    with_tta = Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=True)).predict(image)
    without = predictor.predict(image)
    assert with_tta.summary["tta"] is True and without.summary["tta"] is False
    assert with_tta.summary["peak_gpu_memory_gib"] is None  # on the CPU; {"allocated", "reserved"} on a GPU
    # CPU: 2 windows per step, one flip per call
    assert with_tta.summary["patches_per_network_call"] == without.summary["patches_per_network_call"] == 2
    assert not np.array_equal(with_tta.entropy.array, without.entropy.array)


@pytest.mark.slow
def test_compiled_network_gives_the_eager_result_and_is_recorded(predictor, bundle_dir, monkeypatch):
    # Real torch.compile (inductor, C++ on the CPU). 8 windows in batches of 3: the last batch is padded, so one
    # graph serves the whole image; a second shape would recompile, which is made an error here (and the predictor
    # would then fall back to the eager network, failing the assertions).
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    image = _oblique_ct(seed=4)
    compiled = Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=False, batch_size=3, compile=True))
    messages = []

    class Recorder(NullProgress):
        def render(self, stage, fraction, eta_s, message):
            messages.append(message)

    result = compiled.predict(image, Recorder())
    assert "window batch 1/3 (compiling the network first: tens of seconds)" in messages
    messages.clear()
    compiled.predict(image, Recorder())
    assert "window batch 1/3" in messages  # compiled once: no note the second time
    reference = predictor.predict(image)
    assert result.summary["compiled"] is True and reference.summary["compiled"] is False
    assert result.summary["warnings"] == [] and compiled.compile_failure is None
    np.testing.assert_allclose(result.entropy.array, reference.entropy.array, atol=2e-4)
    assert np.mean(result.mask.array != reference.mask.array) < 1e-3


def test_failed_compilation_falls_back_to_the_eager_network_and_says_so(bundle_dir, monkeypatch):
    class Uncompilable(torch.nn.Module):
        calls = 0

        def forward(self, x):
            Uncompilable.calls += 1
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: Uncompilable())
    compiled = Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=False, compile=True))
    image = _oblique_ct(seed=5)
    first, second = compiled.predict(image), compiled.predict(image)
    eager = Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=False)).predict(image)
    assert Uncompilable.calls == 1  # tried once, not once per case
    for result in (first, second):
        assert result.summary["compiled"] is False
        assert result.summary["warnings"] == ["--compile: torch.compile failed (RuntimeError: InvalidCxxCompiler: No "
                                              "working C++ compiler found); the network runs uncompiled"]
        np.testing.assert_array_equal(result.entropy.array, eager.entropy.array)


def test_cancel_during_the_first_compiled_run_is_a_cancel_not_a_compiler_failure(bundle_dir, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    compiled = Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=False, compile=True))

    class CancelAtFirstWindow(NullProgress):
        def render(self, stage, fraction, eta_s, message):
            if stage == "inference":
                self.cancel()

    with pytest.raises(CancelledError):
        compiled.predict(_oblique_ct(seed=7), CancelAtFirstWindow())
    assert compiled.compile_failure is None and compiled.compiled_network is not None


def test_cli_compile_flag_reaches_the_predictor(tmp_path, bundle_dir, monkeypatch):
    requested = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: requested.append(kwargs) or module)
    write_volume(_oblique_ct(seed=6), tmp_path / "ct.nii.gz")
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(bundle_dir), "--no-tta", "--compile",
                 "--progress", "none", "-o", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert requested == [{"dynamic": False}] and summary["compiled"] is True and summary["warnings"] == []


def test_image_smaller_than_the_patch_is_padded(predictor):
    image, _, _ = synthetic_case("ct", shape_zyx=(4, 20, 18), spacing_mm_xyz=(1.5, 1.5, 4.0))
    prediction = predictor.predict(image)
    assert prediction.mask.array.shape == (4, 20, 18)


def _ct_in_wide_air() -> Volume:
    """The synthetic CT (its body fills its 70x60 mm) in a field of view of air 2.5 times as wide: a crop to find."""
    image, _, _ = synthetic_case("ct", shape_zyx=(10, 40, 44), spacing_mm_xyz=(1.6, 1.5, 4.0))
    array = np.full((10, 100, 110), -1000, dtype=image.array.dtype)
    array[:, 30:70, 33:77] = image.array
    return Volume(array, Geometry((110, 100, 10), image.spacing_mm, (12.5, -40.0, 7.25), oblique_direction()))


def test_ct_is_cropped_to_the_body_and_outputs_cover_the_whole_grid(predictor, bundle_dir):
    image = _ct_in_wide_air()
    prediction = predictor.predict(image)
    crop = prediction.summary["body_crop"]
    assert crop is not None and crop["fraction_of_voxels"] < 0.5
    box = tuple(slice(a, b) for a, b in zip(crop["start_zyx"], crop["stop_zyx"]))
    for out in (prediction.mask, prediction.entropy):
        assert out.geometry == image.geometry
        outside = np.ones(image.array.shape, bool)
        outside[box] = False
        assert not out.array[outside].any()  # certain background where the network did not run
    assert prediction.entropy.array[box].min() > 0  # ... and the network's own answer inside
    whole = Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=False, crop_to_body=False)).predict(image)
    assert whole.summary["body_crop"] is None
    assert prediction.summary["sliding_windows"] < whole.summary["sliding_windows"]
    assert whole.entropy.array[outside].min() > 0


def test_cli_can_turn_the_body_crop_off(tmp_path, bundle_dir):
    write_volume(_ct_in_wide_air(), tmp_path / "ct.nii.gz")
    for flag, expect_crop in (("--crop-to-body", True), ("--no-crop-to-body", False)):
        out = tmp_path / flag
        assert main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(bundle_dir), "--no-tta", flag,
                     "--progress", "none", "-o", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["body_crop"] is not None) == expect_crop


def test_mri_is_never_cropped(predictor):
    # 300 mm of field of view, wider than mri-demo's patch (198 mm), with a 90 mm body in it.
    image = Volume(np.full((10, 200, 200), -1000, dtype=np.int16),
                   Geometry((200, 200, 10), (1.5, 1.5, 4.0), (0.0, 0.0, 0.0)))
    image.array[:, 70:130, 70:130] = 40
    assert predictor.body_box(image) is not None  # a CT model crops it
    mri_predictor = Predictor(load_bundle("mri-demo"), PredictorOptions(device="cpu", tta=False))
    assert mri_predictor.body_box(image) is None  # MRI has no HU scale to find air with


def test_wrong_modality_is_refused(predictor):
    mri, _, _ = synthetic_case("mri")
    with pytest.raises(InputError, match="MRI given to a CT model"):
        predictor.predict(mri)


def test_corrupt_weights_are_refused_by_the_cli(tmp_path, bundle_dir, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    write_volume(_oblique_ct(), tmp_path / "ct.nii.gz")
    code = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(broken), "--progress", "none",
                 "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_progress_json_lines(tmp_path, bundle_dir, capsys):
    write_volume(_oblique_ct(), tmp_path / "ct.nii.gz")
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(bundle_dir), "--no-tta",
                 "--progress", "json", "-o", str(tmp_path / "out")]) == 0
    records = [parse_json_line(line) for line in capsys.readouterr().out.splitlines()]
    assert records and all(r is not None for r in records)  # nothing but JSON lines on stdout
    stages = [r["stage"] for r in records if r["event"] == "progress"]
    assert {"read", "preprocess", "inference", "resample", "write"} <= set(stages)
    assert records[-1]["event"] == "done" and records[-1]["message"].endswith("summary.json")
    assert all(0.0 <= r["fraction"] <= 1.0 for r in records)


def test_window_count_matches_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape, patch in [((9, 36, 41), (8, 32, 32)), ((100, 512, 512), (48, 192, 192)), ((4, 20, 18), (8, 32, 32))]:
        padded = tuple(max(s, p) for s, p in zip(shape, patch))
        interval = _get_scan_interval(padded, patch, 3, (0.5, 0.5, 0.5))
        assert count_windows(shape, list(patch), 0.5) == len(dense_patch_slices(padded, patch, interval))


def _cohort(tmp_path: Path, n: int = 3, bad: bool = True) -> Path:
    rows = []
    for i in range(n):
        write_volume(_oblique_ct(seed=10 + i), tmp_path / "data" / f"c{i}.nii.gz")
        rows.append({"case": f"c{i}", "image": f"c{i}.nii.gz"})
    if bad:
        (tmp_path / "data" / "broken.nii.gz").write_bytes(b"not an image")
        rows.insert(1, {"case": "broken", "image": "broken.nii.gz"})
    with open(tmp_path / "data" / "cohort.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "image"])
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "data" / "cohort.csv"


def _table(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_cohort_goes_on_past_a_bad_case_and_resumes(tmp_path, bundle_dir):
    manifest = _cohort(tmp_path)
    out = tmp_path / "out"
    args = ["segment", "--manifest", str(manifest), "--model", str(bundle_dir), "--no-tta", "--progress", "none",
            "-o", str(out)]
    assert main(args) == 1  # one case failed
    table = _table(out / "cohort_summary.csv")
    assert table["broken"]["status"] == "failed" and "broken.nii.gz" in table["broken"]["error"]
    assert all(table[c]["status"] == "ok" and is_finished(out / c) for c in ("c0", "c1", "c2"))
    # Simulate a crash in the middle of c1: its summary is gone and an image half-written.
    (out / "c1" / "summary.json").unlink()
    before = (out / "c0" / "segmentation.nii.gz").stat().st_mtime_ns
    assert main(args) == 1
    table = _table(out / "cohort_summary.csv")
    assert table["c0"]["status"].startswith("skipped") and table["c2"]["status"].startswith("skipped")
    assert table["c1"]["status"] == "ok" and is_finished(out / "c1")
    assert (out / "c0" / "segmentation.nii.gz").stat().st_mtime_ns == before


def test_cohort_on_two_processes_with_torchrun(tmp_path, bundle_dir):
    manifest = _cohort(tmp_path, n=3, bad=False)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "HepatoblastomaSegLib.cli", "segment", "--manifest", str(manifest), "--model", str(bundle_dir),
         "--no-tta", "--device", "cpu", "--progress", "none", "-o", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = _table(out / "cohort_summary.csv")
    assert list(table) == ["c0", "c1", "c2"] and all(row["status"] == "ok" for row in table.values())
    assert not list(out.glob(".cohort_summary.rank*"))
    # The two ranks split the work: identical results to a single process.
    single = tmp_path / "single"
    assert main(["segment", "--manifest", str(manifest), "--model", str(bundle_dir), "--no-tta", "--progress",
                 "none", "-o", str(single)]) == 0
    for case in ("c0", "c1", "c2"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / case / "segmentation.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(single / case / "segmentation.nii.gz")))
        np.testing.assert_array_equal(a, b)


def test_missing_default_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HBSEG_MODELS_DIR", str(tmp_path / "nowhere"))
    from HepatoblastomaSegLib import bundle_manifest

    monkeypatch.setattr(bundle_manifest, "RESOURCES_MODELS_DIR", tmp_path / "empty")
    write_volume(_oblique_ct(), tmp_path / "ct.nii.gz")
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "--progress", "none", "-o", str(tmp_path / "o")]) == 2
    assert "hbseg train" in capsys.readouterr().err


def test_bad_arguments(tmp_path, capsys):
    assert main(["segment", "-o", str(tmp_path)]) == 2
    assert "exactly one" in capsys.readouterr().err
    with pytest.raises(ModelError):
        load_bundle(tmp_path / "absent")


@pytest.mark.parametrize("failures,expected_calls,device_used,warning", [
    (0, [("cuda", "cuda", 1, 8)], "cuda", None),
    (1, [("cuda", "cuda", 1, 8), ("cuda", "cuda", 1, 1)], "cuda", "one patch per network call (slower)"),
    (2, [("cuda", "cuda", 1, 8), ("cuda", "cuda", 1, 1), ("cuda", "cpu", 1, 1)], "cuda", "stitching in CPU memory"),
    (3, [("cuda", "cuda", 1, 8), ("cuda", "cuda", 1, 1), ("cuda", "cpu", 1, 1), ("cpu", "cpu", 1, 1)], "cpu",
     "ran on the CPU instead"),
])
def test_cuda_out_of_memory_steps_down_then_runs_on_the_cpu_and_says_so(bundle_dir, monkeypatch, failures,
                                                                         expected_calls, device_used, warning):
    # No GPU here: the ladder is driven by a stand-in for the sliding window that runs out of memory N times.
    predictor = Predictor(load_bundle(bundle_dir), PredictorOptions(device="cpu", tta=True))
    predictor.device = torch.device("cuda")
    predictor.batch_size, predictor.max_forward_batch = window_batching(predictor.device, True, None)
    calls, moves = [], []

    def sliding_window(data, sw_device, stitch_device, batch, forward_batch, progress):
        calls.append((sw_device.type, stitch_device.type, batch, forward_batch))
        if len(calls) <= failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.zeros(2, *data.shape)

    class Network(torch.nn.Module):  # records where the network is moved instead of moving it to a missing GPU
        def to(self, device):
            moves.append(str(device))
            return self

    monkeypatch.setattr(predictor, "_probabilities", sliding_window)
    predictor.network = Network()
    warnings: list[str] = []
    probs, used = predictor._probabilities_with_fallback(torch.zeros(4, 5, 6), NullProgress(), warnings)
    assert calls == expected_calls and used == device_used and probs.shape == (2, 4, 5, 6)
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0] and "GPU memory ran out" in warnings[0]
    assert moves == (["cpu", "cuda"] if device_used == "cpu" else [])  # and back, for the next case


@pytest.mark.parametrize("patch,tta,batch_size,memory_gb,expected", [
    ((40, 224, 224), True, None, 8.0, (1, 4)),      # paper network, 8 GB card: 4 flips per call, not 8
    ((40, 224, 224), True, None, None, (1, 4)),     # unknown size: the small budget
    ((40, 224, 224), True, None, 139.8, (1, 8)),    # H200: all 8 flips at once
    ((40, 224, 224), False, None, 8.0, (4, 4)),
    ((40, 224, 224), False, None, 139.8, (4, 8)),
    ((32, 128, 128), True, None, 8.0, (1, 8)),      # a small network keeps all 8 flips in one call
    ((128, 256, 256), True, None, 8.0, (1, 1)),     # larger than the budget: one patch per call, never zero
    ((128, 256, 256), False, None, 8.0, (1, 1)),
    ((40, 224, 224), False, 6, 8.0, (6, 6)),        # --batch-size is the user's word
])
def test_gpu_network_calls_stay_within_the_patch_voxel_budget(patch, tta, batch_size, memory_gb, expected):
    assert window_batching(torch.device("cuda"), tta, batch_size, patch, memory_gb) == expected
    if batch_size is None and expected[1] > 1:
        assert expected[1] * math.prod(patch) <= patch_voxel_budget(memory_gb)


def test_cpu_network_calls_ignore_the_gpu_budget():
    assert window_batching(torch.device("cpu"), True, None, (128, 256, 256), None) == (2, 2)


@pytest.mark.parametrize("option_gb,seen_gb", [(None, 139.8), (8.0, 8.0), (500.0, 139.8)])
def test_gpu_memory_option_plans_for_the_smaller_of_the_card_and_the_option(bundle_dir, monkeypatch, option_gb,
                                                                          seen_gb):
    import HepatoblastomaSegLib.infer.predictor as predictor_module

    seen = []
    monkeypatch.setattr(predictor_module, "resolve_device", lambda requested: torch.device("cuda"))
    monkeypatch.setattr(predictor_module, "device_memory_gb", lambda device: 139.8)
    monkeypatch.setattr(predictor_module.ModelBundle, "build_network", lambda self, device: torch.nn.Identity())
    monkeypatch.setattr(predictor_module, "window_batching",
                        lambda device, tta, batch, patch, memory: seen.append(memory) or (1, 1))
    Predictor.from_options(PredictorOptions(model=str(bundle_dir), device="cuda", gpu_memory_gb=option_gb))
    assert seen == [seen_gb]


def test_gpu_memory_option_must_be_positive(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"), "--gpu-memory-gb", "0"])
    assert code != 0 and "--gpu-memory-gb must be positive" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gpu_stage_times_wait_for_the_gpu(monkeypatch):
    # CUDA kernels run asynchronously: a stage's clock must stop after its work, not after its launches.
    from HepatoblastomaSegLib.infer.predictor import _stage_seconds

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(str(device)))
    assert _stage_seconds(0.0, torch.device("cuda:0")) > 0 and waited == ["cuda:0"]
    assert _stage_seconds(0.0, torch.device("cpu")) > 0 and waited == ["cuda:0"]
