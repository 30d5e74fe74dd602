"""The Qt-free helpers behind the GUI: the model catalogue and "Import model folder...", the modality guess,
the device choice, the diagnostics text (and its background probe), the dependency rules, and the failure messages
(read from errors the library really raises)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HepatoblastomaSeg"))
pytest.importorskip("slicer")

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

import HepatoblastomaSegLib  # noqa: E402
from HepatoblastomaSegLib import bundle as bundle_module  # noqa: E402
from HepatoblastomaSegLib import bundle_manifest  # noqa: E402
from HepatoblastomaSegLib.errors import HepatoblastomaSegError, ModelError  # noqa: E402
from HepatoblastomaSegLib.infer.predictor import guess_modality as library_guess  # noqa: E402
from HepatoblastomaSegLib.infer.predictor import resolve_device  # noqa: E402
from HepatoblastomaSegLib.preprocess import checks  # noqa: E402
from HepatoblastomaSegRunner import dependencies, diagnostics, failures, models  # noqa: E402
from HepatoblastomaSegRunner.process import ProcessRunner, RunState, child_environment  # noqa: E402

from helpers_synthetic import synthetic_case  # noqa: E402
from tiny_models import tiny_bundle  # noqa: E402


@pytest.fixture
def model_dirs(tmp_path, monkeypatch):
    """Bundles in an "environment" folder and a "bundled" folder, the catalogue's and the library's search path."""
    env_dir, bundled = tmp_path / "env", tmp_path / "bundled"
    tiny_bundle(env_dir, name="ct-tiny")
    tiny_bundle(bundled, name="ct-demo")
    tiny_bundle(bundled, name="mri-demo", modality="mri")
    tiny_bundle(bundled, name="ct-tiny", seed=5)  # shadowed by the environment's ct-tiny
    (bundled / "not-a-bundle").mkdir()
    monkeypatch.setenv("HBSEG_MODELS_DIR", str(env_dir))
    monkeypatch.setattr(bundle_manifest, "RESOURCES_MODELS_DIR", bundled)  # the library's and the catalogue's
    return env_dir, bundled


# ------------------------------------------------------------------------------------------------ models
def test_catalogue_lists_what_the_library_finds(model_dirs, tmp_path):
    env_dir, bundled = model_dirs
    entries = models.list_models(tmp_path / "no-user-models", include_helpers=True)
    assert sorted(e.name for e in entries) == sorted(bundle_module.list_bundles())
    by_name = {e.name: e for e in entries}
    assert by_name["ct-tiny"].path == env_dir / "ct-tiny" and by_name["ct-tiny"].source == "environment"
    assert bundle_module.find_bundle("ct-tiny") == by_name["ct-tiny"].path  # same precedence as the library
    assert by_name["mri-demo"].modality == "mri" and by_name["mri-demo"].label == "mri-demo 0.0.1 (T2 MRI)"
    assert by_name["ct-demo"].sha256 == bundle_module.load_bundle(bundled / "ct-demo").sha256
    assert "Intended use" in by_name["ct-demo"].card()
    assert [e.name for e in models.list_models(modality="ct")] == ["ct-demo", "ct-tiny"]  # default first
    assert models.default_model(entries, "ct").name == "ct-demo"
    assert models.default_model(entries, "mri").name == "mri-demo"
    assert models.default_model([by_name["ct-tiny"]], "mri") is None


def test_import_model_folder_verifies_and_copies(model_dirs, tmp_path):
    user = tmp_path / "user-models"
    source = tiny_bundle(tmp_path / "download", name="ct-imported", seed=3)
    entry = models.import_model_folder(source, user)
    assert entry.path == user / "ct-imported" and entry.source == "imported"
    assert bundle_module.load_bundle(entry.path).sha256 == bundle_module.load_bundle(source).sha256
    assert models.list_models(user, "ct")[1].name == "ct-imported"
    assert models.import_model_folder(source, user) == entry  # the same model again: nothing happens

    other = tiny_bundle(tmp_path / "other", name="ct-imported", seed=4)
    with pytest.raises(ModelError, match="different model named 'ct-imported' was imported before"):
        models.import_model_folder(other, user)
    replaced = models.import_model_folder(other, user, replace=True)
    assert replaced.sha256 == bundle_module.load_bundle(other).sha256 != entry.sha256

    broken = tiny_bundle(tmp_path / "broken", name="ct-broken")
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or was replaced"):
        models.import_model_folder(broken, user)
    assert sorted(p.name for p in user.iterdir()) == ["ct-imported"], "nothing half-copied is left behind"


def test_modality_guess_agrees_with_the_library_and_warns_on_mismatch(model_dirs):
    assert models.AIR_THRESHOLD_HU == checks.AIR_THRESHOLD_HU
    assert models.CT_MIN_AIR_FRACTION == checks.CT_MIN_AIR_FRACTION
    for modality in ("ct", "mri"):
        image, _, _ = synthetic_case(modality)
        assert models.guess_modality(image.array) == library_guess(image) == modality
    _, bundled = model_dirs
    ct_model, mri_model = (models.read_entry(bundled / name, "bundled") for name in ("ct-demo", "mri-demo"))
    assert models.modality_mismatch("ct", "ct", ct_model) == ""
    assert models.modality_mismatch("mri", "ct", ct_model).startswith(
        "This looks like an MRI (no air below -500 HU), but the CT model 'ct-demo' is selected")
    assert "looks like a CT" in models.modality_mismatch("ct", "mri", mri_model)
    assert "but Modality is T2 MRI" in models.modality_mismatch("mri", "mri", ct_model)


def test_memory_estimate_grows_with_the_work(model_dirs):
    _, bundled = model_dirs
    entry = models.read_entry(bundled / "ct-demo", "bundled")
    plans, width = entry.plans(), entry.width()
    small = models.estimate_inference_memory_gb(plans, width, batch_size=1)
    assert 1.0 < small < 1.1  # a tiny network: little more than the CUDA context
    assert models.estimate_inference_memory_gb(plans, width, batch_size=4) > small
    assert models.estimate_inference_memory_gb(plans, 1.0) > models.estimate_inference_memory_gb(plans, width)
    image = dict(image_spacing_zyx_mm=(4.0, 1.5, 1.5))
    one = models.estimate_inference_memory_gb(plans, width, image_shape_zyx=(100, 256, 256), **image)
    two = models.estimate_inference_memory_gb(plans, width, image_shape_zyx=(200, 256, 256), **image)
    stitch_one = one - models.estimate_inference_memory_gb(plans, width)
    assert two - models.estimate_inference_memory_gb(plans, width) == pytest.approx(2 * stitch_one)
    # 3 float32 values (2 classes + the window weights) per voxel at the plans' spacing.
    assert stitch_one == pytest.approx(3 * 4 * 100 * 256 * 256 / 1e9)


def test_memory_estimate_matches_what_the_paper_network_used_on_an_h200():
    # benchmarks/results/2026-11-27-h200/session2/infer_paper.json: peak allocated GiB with 4 patches per call (no
    # TTA) and 8 (TTA), bf16, paper-width network planned on full-size phantoms (patch 32x224x224), 59x512x512 CT.
    plans = {"topology": {"patch_size_zyx": [32, 224, 224],
                          "strides_zyx": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                          "filters": [32, 64, 128, 256, 320, 320]},
             "labels": {"background": 0, "tumor": 1}}
    for patches, measured_gib in ((4, 3.63), (8, 6.58)):
        measured_gb = measured_gib * 2**30 / 1e9
        estimate = models.estimate_inference_memory_gb(plans, 1.0, batch_size=patches)
        assert 0.85 * measured_gb < estimate < 1.3 * measured_gb, (patches, estimate, measured_gb)


# ------------------------------------------------------------------------------------------------ devices
def test_device_choice_names_the_reason():
    no_gpu = {"torch": "2.13.0+cpu", "cuda_available": False, "cuda_version": None, "gpus": []}
    small_gpu = {"torch": "2.13.0", "cuda_available": True, "cuda_version": "12.8",
                 "gpus": [{"name": "NVIDIA T1000", "memory_gb": 4.0}]}
    assert diagnostics.choose_device("CPU", small_gpu, 6.0) == diagnostics.DeviceChoice("cpu", "")
    assert diagnostics.choose_device("Auto", None, 6.0).device == "auto"  # not probed yet: the library decides
    auto = diagnostics.choose_device("Auto", no_gpu)
    assert auto.device == "cpu" and "No CUDA GPU found" in auto.message
    gpu = diagnostics.choose_device("GPU", no_gpu)
    assert gpu.device is None and gpu.level == "error" and "CPU-only torch build" in gpu.message
    assert diagnostics.choose_device("Auto", small_gpu, 6.0).message == \
        "GPU has 4 GB, the model needs about 6 GB: running on the CPU (slower)."
    forced = diagnostics.choose_device("GPU", small_gpu, 6.0)
    assert forced.device == "cuda" and forced.level == "warning" and "may run out of memory" in forced.message
    assert diagnostics.choose_device("Auto", small_gpu, 2.0) == diagnostics.DeviceChoice("cuda", "")
    assert diagnostics.device_summary(small_gpu) == "GPU: NVIDIA T1000, 4.0 GB; torch 2.13.0, CUDA 12.8"
    assert "not installed yet" in diagnostics.device_summary({"torch": diagnostics.NOT_INSTALLED})


def test_diagnostics_text_reports_the_real_environment(model_dirs):
    import monai

    entries = models.list_models()
    info = diagnostics.collect(slicer_version="5.9.0", models=entries)
    text = diagnostics.diagnostics_text(info)
    rows = dict(line.split(" : ", 1) for line in text.splitlines())
    rows = {label.strip(): value for label, value in rows.items()}
    assert rows["torch"] == torch.__version__ and rows["MONAI"] == monai.__version__
    assert rows["numpy"] == np.__version__ and rows["SimpleITK"] == sitk.Version_VersionString()
    assert rows["3D Slicer"] == "5.9.0" and rows["Python"] == sys.version.split()[0]
    assert rows["CUDA available"] == ("yes" if torch.cuda.is_available() else "no")
    assert ("GPU 0" in rows) == torch.cuda.is_available()
    assert rows["HepatoblastomaSeg library"].startswith(HepatoblastomaSegLib.__version__)
    for entry in entries:
        assert rows[f"model {entry.name}"].startswith(f"{entry.version} ({entry.modality}, {entry.source}, sha256 "
                                                      f"{entry.sha256[:12]}")
    assert diagnostics.package_version("surely-not-installed-hbseg") == diagnostics.NOT_INSTALLED
    assert "none found" in diagnostics.diagnostics_text(diagnostics.collect(include_torch=False))


def test_diagnostics_probe_runs_in_a_background_process(tmp_path):
    argv = diagnostics.probe_command(sys.executable, REPO, models_json=json.dumps([{"name": "m", "version": "1"}]),
                                     slicer_version="5.9.0")
    runner = ProcessRunner(argv, env=child_environment(), cwd=tmp_path, require_done_event=False).start()
    assert runner.wait(120) is RunState.DONE, runner.log_text()
    info = diagnostics.parse_probe_output(runner.stdout_lines)
    assert info["torch"] == torch.__version__ and info["cuda_available"] == torch.cuda.is_available()
    assert info["slicer"] == "5.9.0" and info["models"] == [{"name": "m", "version": "1"}]
    assert info["library"].startswith(HepatoblastomaSegLib.__version__)
    with pytest.raises(ValueError):
        diagnostics.parse_probe_output(["not json", "{broken"])


# ------------------------------------------------------------------------------------------------ dependencies
def test_dependency_rules(tmp_path):
    assert dependencies.unmet(["numpy>=1.0", "numpy>=999", "surely-not-installed-hbseg", "torch>=2.3"]) == \
        ["numpy>=999", "surely-not-installed-hbseg"]
    assert dependencies.unmet() == [], "the test environment has what hbseg segment needs"
    assert dependencies.satisfies("2.13.0+cpu", ">=2.3") and not dependencies.satisfies("2.2.1", ">=2.3")
    assert dependencies.satisfies("1.6.1", ">=1.4,<2") and not dependencies.satisfies("2.0.0", ">=1.4,<2")
    assert dependencies.split_requirement("monai>=1.4") == ("monai", ">=1.4")
    assert dependencies.torch_problem() == ""
    assert "PyTorch Utils" in dependencies.torch_problem("torch>=99")
    assert "not installed" in dependencies.torch_problem("surely-not-installed-hbseg>=1")
    pins = dict(line.split("==") for line in dependencies.constraints_text().splitlines())
    assert set(pins) == {"numpy", "SimpleITK", "vtk", "torch"}
    assert pins["numpy"] == np.__version__ and pins["torch"] == torch.__version__
    import vtk

    assert pins["vtk"] == vtk.vtkVersion.GetVTKVersion() and pins["SimpleITK"] == sitk.Version_VersionString()
    constraints = dependencies.write_constraints(tmp_path / "c.txt")
    # pip itself accepts the file and keeps the pinned versions (no index: nothing may be downloaded).
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--dry-run", "--disable-pip-version-check"]
    kept = subprocess.run(pip + ["-c", str(constraints), "numpy"], capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0, kept.stderr
    assert "already satisfied" in kept.stdout and "Would install" not in kept.stdout
    (tmp_path / "other.txt").write_text("numpy==0.0.1\n")
    refused = subprocess.run(pip + ["-c", str(tmp_path / "other.txt"), "numpy"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0


# ------------------------------------------------------------------------------------------------ failures
def _message(call) -> str:
    try:
        call()
    except HepatoblastomaSegError as exc:
        return f"hbseg: error: {exc}"
    raise AssertionError("the library raised nothing")


def test_failures_from_real_library_errors_name_cause_and_next_step(tmp_path):
    ct, _, _ = synthetic_case("ct")
    mri, _, _ = synthetic_case("mri")
    cases = {
        "This looks like an MRI, but the CT model": _message(lambda: checks.check_modality(mri, "ct")),
        "This looks like a CT (it has air below -500 HU), but the MRI model": _message(
            lambda: checks.check_modality(ct, "mri")),
        "implausible": _message(lambda: checks.check_spacing(ct.geometry.__class__(
            ct.geometry.size, (0.01, 1.0, 1.0), ct.geometry.origin_mm, ct.geometry.direction), path="x.nii.gz")),
        "could not be found or is incomplete": _message(lambda: bundle_module.find_bundle("no-such-model")),
    }
    broken = tiny_bundle(tmp_path, name="ct-broken")
    (broken / "model.safetensors").write_bytes(b"not the weights")
    cases["damaged"] = _message(lambda: bundle_module.load_bundle(broken))
    wrong = tiny_bundle(tmp_path, name="ct-wrong")
    cases["The selected model is for CT, but Modality says MRI"] = _message(
        lambda: bundle_module.load_bundle(wrong, modality="mri"))
    if not torch.cuda.is_available():
        cases["Device GPU was chosen, but torch sees no CUDA GPU"] = _message(lambda: resolve_device("cuda"))
    for expected, message in cases.items():
        failure = failures.explain_failure(message)
        assert expected in failure.cause, (expected, message, failure)
        assert failure.next_step and failure.detail == message[len("hbseg: error: "):]
        assert failure.text().startswith(failure.cause) and "Next step:" in failure.text()

    missing = failures.explain_failure("", ["Traceback ...", "ModuleNotFoundError: No module named 'monai'"])
    assert missing.cause == "A Python package is missing in 3D Slicer's Python: monai."
    oom = failures.explain_failure("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "GPU ran out of memory" in oom.cause and "CPU" in oom.next_step
    # The runner's message for a killed process mentions memory; it must not read as a GPU problem.
    killed = failures.explain_failure("the process was killed by signal 9 (out of memory?)", returncode=-9)
    assert "stopped by the system (signal 9)" in killed.cause and "Close other programs" in killed.next_step
    unknown = failures.explain_failure("hbseg: error: case.nrrd: something new went wrong")
    assert unknown.cause == "case.nrrd: something new went wrong" and "Show log" in unknown.next_step


def test_selftest_fixtures_make_a_phantom_and_a_working_model(tmp_path, monkeypatch):
    from HepatoblastomaSegRunner import selftest

    monkeypatch.setattr(bundle_manifest, "RESOURCES_MODELS_DIR", tmp_path / "none")
    monkeypatch.delenv("HBSEG_MODELS_DIR", raising=False)
    data = selftest.make_phantom(tmp_path / "phantom")
    assert data.image.is_file() and sorted(data.annotators) == ["R1", "R2", "R3"]
    image = sitk.ReadImage(str(data.image))
    assert sitk.GetArrayFromImage(image).shape == data.tumor.shape and data.tumor.any()
    assert models.guess_modality(sitk.GetArrayFromImage(image)) == "ct"
    entry = selftest.selftest_model(tmp_path / "work", tmp_path / "no-user-models")
    assert entry.name == selftest.SELFTEST_MODEL_NAME and entry.modality == "ct"
    bundle = bundle_module.load_bundle(entry.path)  # a complete bundle, checksum included
    assert bundle.plans.patch_size_zyx and math.isclose(bundle.width, 0.25)
    shutil.rmtree(tmp_path / "work")
