"""The batch script ``HepatoblastomaSeg/Scripts/segment_cohort.py`` on a 3-case cohort, headless, with an injected
predict function (the phantoms' own tumour masks and entropy maps): files, resume after an interruption, a failing
case, and the Evaluation module's cohort report."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from slicer_env import MODULE_DIR, assert_geometry_close, make_case, prediction_of, sitk_geometry  # noqa: E402

from HepatoblastomaSegLib.io import write_volume  # noqa: E402
from HepatoblastomaSegLib.io.segmentation_file import write_segmentation_nrrd  # noqa: E402
from HepatoblastomaSegLib.terminology import HEPATOBLASTOMA  # noqa: E402

pytestmark = pytest.mark.slicer

SCRIPT = MODULE_DIR / "Scripts" / "segment_cohort.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("segment_cohort", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is being executed
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture
def cohort(tmp_path):
    """Three cases in a folder, the manifest beside them with relative paths; case 2 is a left-handed NRRD and its
    R3 a .seg.nrrd, the others NIfTI."""
    data = tmp_path / "data"
    cases = {}
    rows = ["case,image,modality,R1,R2,R3"]
    for index in range(3):
        name = f"hb{index + 1:03d}"
        case = make_case(seed=10 + index)
        cases[name] = case
        folder = data / name
        suffix = ".nrrd" if index == 1 else ".nii.gz"
        write_volume(case.image, folder / f"image{suffix}")
        write_volume(case.raters["R1"], folder / "R1.nii.gz")
        write_volume(case.raters["R2"], folder / "R2.nii.gz")
        if index == 1:
            write_segmentation_nrrd(case.raters["R3"], folder / "R3.seg.nrrd", [HEPATOBLASTOMA])
            r3 = f"{name}/R3.seg.nrrd"
        else:
            write_volume(case.raters["R3"], folder / "R3.nii.gz")
            r3 = f"{name}/R3.nii.gz"
        rows.append(f"{name},{name}/image{suffix},ct,{name}/R1.nii.gz,{name}/R2.nii.gz,{r3}")
    manifest = data / "cohort.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, cases


class Predictor:
    """Real data standing in for the network: the phantom's tumour mask and entropy map of the image it gets."""

    def __init__(self, cases, interrupt_on_call: int | None = None):
        self.cases, self.interrupt_on_call, self.seen = cases, interrupt_on_call, []

    def __call__(self, volume):
        self.seen.append(volume)
        if self.interrupt_on_call == len(self.seen):
            raise KeyboardInterrupt
        for case in self.cases.values():
            if np.array_equal(case.image.array, volume.array):
                assert volume.metadata.get("modality") == "ct"
                return prediction_of(case)
        raise AssertionError("the predictor got an image that is not one of the cohort's, or not on its grid")


def test_cohort_writes_everything_resumes_and_reports(script, cohort, tmp_path, capsys):
    manifest, cases = cohort
    out = tmp_path / "results"

    interrupted = Predictor(cases, interrupt_on_call=2)
    assert script.main(["--manifest", str(manifest), "--out", str(out), "--no-figures"], predict=interrupted) == 130
    assert (out / "hb001" / "hb001_done.json").is_file()
    assert not (out / "hb002" / "hb002_done.json").exists()
    assert not list(out.rglob(".*partial*"))  # nothing half-written under any name

    resumed = Predictor(cases)
    assert script.main(["--manifest", str(manifest), "--out", str(out), "--no-figures"], predict=resumed) == 0
    assert len(resumed.seen) == 2  # hb001 was finished and skipped
    printed = capsys.readouterr().out
    assert "hb001: finished before, skipped" in printed and "cohort report:" in printed

    for name, case in cases.items():
        folder = out / name
        seg = sitk.ReadImage(str(folder / f"{name}.seg.nrrd"))
        assert np.array_equal(sitk.GetArrayFromImage(seg), case.tumor.array)
        assert_geometry_close(sitk_geometry(seg), case.image.geometry)
        entropy = sitk.ReadImage(str(folder / f"{name}_entropy.nrrd"))
        assert entropy.GetPixelID() == sitk.sitkFloat32
        assert np.array_equal(sitk.GetArrayFromImage(entropy), case.entropy.array)
        assert_geometry_close(sitk_geometry(entropy), case.image.geometry)
        consensus = sitk.ReadImage(str(folder / f"{name}_consensus.seg.nrrd"))
        masks = [case.raters[r].array for r in ("R1", "R2", "R3")]
        assert np.array_equal(sitk.GetArrayFromImage(consensus), (np.sum(masks, axis=0) >= 2).astype(np.uint8))
        with open(folder / f"{name}_metrics.tsv", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        assert [r["reference"] for r in rows] == ["", "AI mask", "R1", "R2", "R3", "Consensus"]
        assert {r["case"] for r in rows} == {name}
        record = json.loads((folder / f"{name}_done.json").read_text())
        assert set(record["files"]) == {f"{name}.seg.nrrd", f"{name}_entropy.nrrd", f"{name}_metrics.tsv",
                                        f"{name}_metrics.schema.tsv", f"{name}_consensus.seg.nrrd",
                                        f"{name}_agreement.tsv", f"{name}_agreement.schema.tsv"}

    with open(out / "cohort_metrics.tsv", newline="") as handle:
        cohort_rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(cohort_rows) == 3 * 6
    with open(out / "report" / "per_case.csv", newline="") as handle:
        per_case = list(csv.DictReader(handle))
    assert {r["case"] for r in per_case} == set(cases)
    assert (out / "report" / "report.html").is_file()

    again = Predictor(cases)
    assert script.main(["--manifest", str(manifest), "--out", str(out), "--no-report"], predict=again) == 0
    assert again.seen == []


def test_a_failing_case_does_not_stop_the_cohort(script, cohort, tmp_path, capsys):
    manifest, cases = cohort
    (manifest.parent / "hb002" / "image.nrrd").unlink()
    broken_r2 = manifest.parent / "hb003" / "R2.nii.gz"
    shifted = make_case(seed=12).raters["R2"]
    shifted.geometry = type(shifted.geometry)(shifted.geometry.size, shifted.geometry.spacing_mm, (0.0, 0.0, 0.0),
                                              shifted.geometry.direction)
    write_volume(shifted, broken_r2)  # hb003's R2 is on another grid
    out = tmp_path / "results"
    code = script.main(["--manifest", str(manifest), "--out", str(out), "--no-report"], predict=Predictor(cases))
    assert code == 1
    errors = capsys.readouterr().err
    assert "hb002: FAILED" in errors and "image.nrrd" in errors
    assert "hb003: FAILED" in errors and "annotator R2" in errors and "R2.nii.gz" in errors
    assert (out / "hb001" / "hb001_done.json").is_file()
    with open(out / "cohort_status.tsv", newline="") as handle:
        status = {r["case"]: r["status"] for r in csv.DictReader(handle, delimiter="\t")}
    assert status == {"hb001": "done", "hb002": "failed", "hb003": "failed"}
    assert not (out / "hb003" / "hb003_done.json").exists()


def test_script_runs_as_a_program_and_explains_itself(script, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    assert "--manifest" in capsys.readouterr().out
    # As a program (what `python segment_cohort.py` and Slicer's --python-script run): a bad manifest, exit 2.
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case,picture\nx,y.nii.gz\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--manifest", str(manifest), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "image" in done.stderr and "cohort.csv" in done.stderr


def test_a_missing_model_is_reported_before_any_case(script, cohort, tmp_path, capsys):
    manifest, _ = cohort
    missing = tmp_path / "no-such-model"
    code = script.main(["--manifest", str(manifest), "--out", str(tmp_path / "o"), "--model", str(missing)])
    assert code == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- every way out ends the program (and 3D Slicer) with a status ----------------------------------------------

def _run_as_program(monkeypatch, argv, *, in_slicer: bool):
    """Execute the script as ``__main__`` in this process, as ``Slicer --python-script`` does; returns the status
    passed to ``slicer.util.exit`` (in_slicer: ``slicer.app`` stands in for the application, the one thing that
    cannot exist here) or to ``sys.exit``."""
    import runpy

    exits = []
    if in_slicer:
        monkeypatch.setattr(slicer, "app", object(), raising=False)
        monkeypatch.setattr(slicer.util, "exit", exits.append, raising=False)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        exits.append(exc.code)
    assert len(exits) == 1, f"the script ended {len(exits)} times"
    return exits[0]


def test_in_slicer_a_missing_torch_ends_slicer_with_status_2(cohort, tmp_path, monkeypatch, capsys):
    manifest, _ = cohort
    # The predictor module (which imports torch) cannot be imported, as before the module installed torch. (torch
    # itself is loaded in this process; the next test takes it away in a fresh one.)
    monkeypatch.setitem(sys.modules, "HepatoblastomaSegLib.infer.predictor", None)
    code = _run_as_program(monkeypatch, ["--manifest", str(manifest), "--out", str(tmp_path / "o")], in_slicer=True)
    assert code == 2
    assert "model cannot be loaded" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_in_slicer_an_unexpected_error_ends_slicer_with_status_1(cohort, tmp_path, monkeypatch, capsys):
    manifest, _ = cohort
    # Inside the application the script asks for the application's scene; here the stand-in app has none, which is
    # an error the script does not expect: it must still end Slicer, with a traceback and status 1.
    code = _run_as_program(monkeypatch, ["--manifest", str(manifest), "--out", str(tmp_path / "o"), "--model",
                                         "x"], in_slicer=True)
    assert code == 2  # the model 'x' does not exist: refused before any scene is touched
    monkeypatch.setattr(mrml_module(), "application_environment", _raise_runtime_error)
    code = _run_as_program(monkeypatch, ["--manifest", str(manifest), "--out", str(tmp_path / "o")], in_slicer=True)
    err = capsys.readouterr().err
    assert code == 1 and "RuntimeError: no scene here" in err and "Traceback" in err


def mrml_module():
    import HepatoblastomaSegMRML

    return HepatoblastomaSegMRML


def _raise_runtime_error(*args, **kwargs):
    raise RuntimeError("no scene here")


def test_help_and_bad_arguments_end_slicer_too(monkeypatch, capsys):
    assert _run_as_program(monkeypatch, ["--help"], in_slicer=True) == 0
    assert _run_as_program(monkeypatch, ["--no-such-option"], in_slicer=True) == 2
    assert "the following arguments are required" in capsys.readouterr().err


def test_plain_python_without_torch_exits_2_with_a_message(cohort, tmp_path):
    manifest, _ = cohort
    # A fresh interpreter in which torch cannot be found (an import hook answers as for a package that is not
    # installed), running the script as a program.
    code = textwrap.dedent("""\
        import runpy, sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, NoTorch())
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        """)
    done = subprocess.run([sys.executable, "-c", code, str(SCRIPT), "--manifest", str(manifest), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert "'torch' is not installed" in done.stderr and "Traceback" not in done.stderr


def test_a_damaged_model_exits_2_with_a_message(cohort, tmp_path):
    from tiny_models import tiny_bundle

    manifest, _ = cohort
    bundle = tiny_bundle(tmp_path / "models", name="broken")
    weights = next(Path(bundle).glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    code = subprocess.run([sys.executable, str(SCRIPT), "--manifest", str(manifest), "--out", str(tmp_path / "o"),
                           "--model", str(bundle)], capture_output=True, text=True, timeout=180)
    assert code.returncode == 2, code.stderr
    assert "broken" in code.stderr and "Traceback" not in code.stderr


def test_the_script_uses_the_library_of_its_own_checkout(tmp_path):
    """From a source checkout, with no PYTHONPATH and run from elsewhere, the library next to the script is used
    (not another installed copy)."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); import HepatoblastomaSegLib, HepatoblastomaSegMRML; "
            "print(HepatoblastomaSegLib.__file__); print(HepatoblastomaSegMRML.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    library, glue = (Path(line) for line in done.stdout.split())
    assert library.is_relative_to(MODULE_DIR.parent / "HepatoblastomaSegLib")
    assert glue.is_relative_to(MODULE_DIR / "HepatoblastomaSegMRML")


def test_without_matplotlib_the_report_has_no_figures_and_a_warning(script, cohort, tmp_path, monkeypatch, capsys):
    manifest, cases = cohort
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "results"
    assert script.main(["--manifest", str(manifest), "--out", str(out)], predict=Predictor(cases)) == 0
    captured = capsys.readouterr()
    assert "matplotlib is not installed" in captured.err
    assert (out / "report" / "report.html").is_file()
    assert not list((out / "report").rglob("*.png"))


def test_the_cohort_runs_on_the_librarys_runner_and_recomputes_what_changed(script, cohort, tmp_path, capsys):
    """The library's cohort table is written too, and a re-run recomputes exactly the case whose annotator mask
    changed (the old loop skipped it: its files still matched their checksums)."""
    manifest, cases = cohort
    out = tmp_path / "results"
    assert script.main(["--manifest", str(manifest), "--out", str(out), "--no-report"], predict=Predictor(cases)) == 0
    with open(out / "cohort_summary.csv", newline="") as handle:
        table = {r["case"]: r for r in csv.DictReader(handle)}
    assert {k: r["status"] for k, r in table.items()} == {name: "ok" for name in cases}
    assert {r["device"] for r in table.values()} == {"cpu"} and {r["seconds_total"] for r in table.values()} == {"3.75"}
    capsys.readouterr()
    with open(out / "hb002" / "hb002_metrics.tsv", newline="") as handle:
        before = {r["reference"]: r["dice"] for r in csv.DictReader(handle, delimiter="\t")}
    assert before["R1"] != before["R2"]

    write_volume(cases["hb002"].raters["R2"], manifest.parent / "hb002" / "R1.nii.gz")  # hb002's R1 := its R2
    again = Predictor(cases)
    assert script.main(["--manifest", str(manifest), "--out", str(out), "--no-report"], predict=again) == 0
    assert len(again.seen) == 1 and np.array_equal(again.seen[0].array, cases["hb002"].image.array)
    captured = capsys.readouterr()
    assert "hb002: recomputing: the image, an annotator's mask or the options changed" in captured.err
    assert "hb001: finished before, skipped" in captured.out and "hb003: finished before, skipped" in captured.out
    with open(out / "hb002" / "hb002_metrics.tsv", newline="") as handle:
        after = {r["reference"]: r["dice"] for r in csv.DictReader(handle, delimiter="\t")}
    assert after["R1"] == after["R2"] == before["R2"]


def test_a_second_run_into_the_same_folder_is_refused(script, cohort, tmp_path, capsys):
    from HepatoblastomaSegLib.io.atomic import folder_lock

    manifest, cases = cohort
    out = tmp_path / "results"
    out.mkdir()
    with folder_lock(out, wait=False):  # another run holds the folder
        code = script.main(["--manifest", str(manifest), "--out", str(out), "--no-report"], predict=Predictor(cases))
    assert code == 2 and "another hbseg run is writing into this output folder" in capsys.readouterr().err
    assert not (out / "hb001").exists()


def test_outputs_that_would_overwrite_an_input_are_refused(script, cohort, tmp_path, capsys):
    manifest, cases = cohort
    out = tmp_path / "results"
    image = out / "hb001" / "hb001_entropy.nrrd"  # hb001's image lies where its entropy map would go
    write_volume(cases["hb001"].image, image)
    before = image.read_bytes()
    rows = manifest.read_text().splitlines()
    rows[1] = rows[1].replace("hb001/image.nii.gz", str(image))
    manifest.write_text("\n".join(rows) + "\n")
    predictor = Predictor(cases)
    assert script.main(["--manifest", str(manifest), "--out", str(out), "--no-report"], predict=predictor) == 1
    assert "would overwrite the input" in capsys.readouterr().err and len(predictor.seen) == 2
    assert image.read_bytes() == before
