"""Issue 21, hardening: no silent wrong answers, no lost inputs, outputs that stay true under races and kills.

Each test here failed on the code before the issue was fixed (the hostile case was read, repaired or run silently).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from HepatoblastomaSegLib.errors import InputError
from HepatoblastomaSegLib.io import read_volume, write_volume
from HepatoblastomaSegLib.io.headers import DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV

from helpers_hostile import metaimage, nifti_header_bomb, nifti_with

PIXDIM3 = 88  # byte offset of pixdim[3] (slice spacing) in a NIfTI-1 header


# ------------------------------------------------------------------------------------------------ headers
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf")])
def test_nifti_slice_spacing_zero_nan_inf_is_refused_not_read_as_1_mm(tmp_path, ct_like_volume, suffix, value):
    path = nifti_with(ct_like_volume, tmp_path / f"image{suffix}", PIXDIM3, "f", value)
    with pytest.raises(InputError, match="spacing in the header is zero or negative or not finite") as info:
        read_volume(path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_nifti_nan_inf_voxels_are_refused_not_read_as_0(tmp_path, ct_like_volume, suffix, bad):
    array = ct_like_volume.array.astype(np.float32)
    array[1, 2, 3] = bad
    path = write_volume(ct_like_volume.with_array(array), tmp_path / f"image{suffix}")
    with pytest.raises(InputError, match="1 voxels are not finite"):
        read_volume(path)
    assert np.isfinite(read_volume(path, allow_non_finite=True).array).all()  # ITK's repair, asked for


def test_truncated_uncompressed_nifti_is_refused_not_zero_filled(tmp_path, ct_like_volume):
    path = write_volume(ct_like_volume, tmp_path / "image.nii")
    path.write_bytes(path.read_bytes()[: 352 + ct_like_volume.array.nbytes // 2])
    with pytest.raises(InputError, match="truncated image file: 2880 bytes of voxel data, the header declares 5760"):
        read_volume(path)


@pytest.mark.parametrize("fields, problem", [
    ({"ElementSpacing": "-1 1 1"}, "zero or negative or not finite"),
    ({"ElementSpacing": "1 nan 1"}, "zero or negative or not finite"),
    ({"TransformMatrix": "1 0 0 0 1 0 0 0 0"}, "direction matrix in the header is singular"),
    ({"TransformMatrix": "1 0 0 0 nan 0 0 0 1"}, "direction matrix in the header is not finite"),
])
def test_metaimage_negative_spacing_and_bad_direction_are_refused(tmp_path, fields, problem):
    path = metaimage(tmp_path / "image.mha", **fields)
    with pytest.raises(InputError, match=problem) as info:
        read_volume(path)
    assert "bad.mha" in str(info.value) or "image.mha" in str(info.value)


def test_truncated_uncompressed_metaimage_and_nrrd_are_refused(tmp_path, ct_like_volume):
    for suffix in (".mha", ".nrrd"):
        path = tmp_path / f"image{suffix}"
        import SimpleITK as sitk

        sitk.WriteImage(ct_like_volume.to_sitk(), str(path), False)
        path.write_bytes(path.read_bytes()[:-100])
        with pytest.raises(InputError, match="truncated image file"):
            read_volume(path)


def test_nifti2_and_gzip_named_nii_say_what_they_are(tmp_path, ct_like_volume):
    gz = write_volume(ct_like_volume, tmp_path / "image.nii.gz")
    misnamed = tmp_path / "misnamed.nii"
    misnamed.write_bytes(gz.read_bytes())
    with pytest.raises(InputError, match="gzip-compressed data but is named .nii; rename it to .nii.gz"):
        read_volume(misnamed)
    nifti2 = tmp_path / "two.nii"
    nifti2.write_bytes((540).to_bytes(4, "little") + b"n+2\0\r\n\x1a\n" + bytes(600))
    with pytest.raises(InputError, match="NIfTI-2 file"):
        read_volume(nifti2)


def test_complex_voxels_are_refused(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6, 7), np.complex64)), str(tmp_path / "k.nii"))
    with pytest.raises(InputError, match="complex-valued voxels"):
        read_volume(tmp_path / "k.nii")


def test_qform_sform_disagreement_is_said(tmp_path, ct_like_volume, caplog):
    path = write_volume(ct_like_volume, tmp_path / "image.nii")
    assert "warnings" not in read_volume(path).metadata
    from helpers_hostile import patch_nifti

    patch_nifti(path, 280 + 12, "f", 50.0)  # srow_x[3]: the sform moves x from -10.5 (RAS) to 50, the qform not
    volume = read_volume(path)
    assert any("qform and sform disagree" in w and "60.5 mm" in w for w in volume.metadata["warnings"])
    assert "qform and sform disagree" in caplog.text


# ------------------------------------------------------------------------------------------------ bombs
@pytest.mark.parametrize("name, size", [("bomb.nii.gz", (1024, 1024, 1024)), ("huge.nii", (32767, 32767, 32767)),
                                        ("claims2gib.nii.gz", (1024, 1024, 1024))])
def test_header_bombs_are_refused_before_a_voxel_is_read(tmp_path, name, size):
    path = nifti_header_bomb(tmp_path / name, size, datatype=4 if "2gib" in name else 2,
                             bitpix=16 if "2gib" in name else 8)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"more than the limit of {DEFAULT_MAX_VOXELS}.*{MAX_VOXELS_ENV}"):
        read_volume(path)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 50e6  # no allocation of the declared size, no decompression of the stream


def test_voxel_limit_is_overridable(tmp_path, ct_like_volume, monkeypatch):
    path = write_volume(ct_like_volume, tmp_path / "image.mha")
    monkeypatch.setenv(MAX_VOXELS_ENV, "1000")
    with pytest.raises(InputError, match="declares 2880 voxels .24x20x6., more than the limit of 1000"):
        read_volume(path)
    monkeypatch.setenv(MAX_VOXELS_ENV, "2880")
    assert read_volume(path).array.shape == (6, 20, 24)


# ------------------------------------------------------------------------------------------------ not a scan
def _ct(**kwargs):
    from helpers_synthetic import synthetic_case

    return synthetic_case("ct", **kwargs)[0]


def test_ct_stored_as_hu_plus_1024_is_not_guessed_mri_and_is_refused_with_the_reason():
    from HepatoblastomaSegLib.preprocess.checks import check_modality, guess_modality  # infer.predictor's too

    ct = _ct()
    offset = ct.with_array((ct.array.astype(np.int32) + 1024).clip(0).astype(np.uint16))
    assert guess_modality(ct) == "ct" and guess_modality(offset) == "ct"
    for modality in ("ct", "mri"):
        with pytest.raises(InputError, match="CT stored as HU\\+1024"):
            check_modality(offset, modality)
    from helpers_synthetic import synthetic_case

    mri = synthetic_case("mri")[0]
    for array in (mri.array, (mri.array * 4).astype(np.uint16), (mri.array * 5 + 400).astype(np.uint16)):
        assert guess_modality(mri.with_array(array)) == "mri"  # T2 magnitudes, even as unsigned integers
        check_modality(mri.with_array(array), "mri")


def test_t2_mri_whose_bright_tissues_peak_near_1024_is_not_taken_for_an_offset_ct(monkeypatch):
    """A T2 MRI phantom (seed 1002, case 9) stored as uint16: dark background, its brightest tissues in a narrow peak
    near 1024, like the body of a CT stored as HU+1024. It was refused as such a CT (training on a cohort holding it
    stopped); what tells them apart is the range between air and body, which its dimmer tissues fill."""
    from HepatoblastomaSegLib.phantom import generate_case
    from HepatoblastomaSegLib.preprocess import checks

    mri = generate_case("mri", 1002, 9, "small").image
    assert mri.array.dtype == np.uint16
    assert not checks.looks_like_offset_ct(mri) and checks.guess_modality(mri) == "mri"
    checks.check_modality(mri, "mri")
    monkeypatch.setattr(checks, "_OFFSET_CT_MAX_BETWEEN_PER_BODY", np.inf)  # without the rule between air and body
    assert checks.looks_like_offset_ct(mri)


@pytest.mark.parametrize("case, problem", [
    ("blank", "shows no body: only 0.00 % of its voxels are above -500 HU"),
    ("mask", "only 2 distinct value\\(s\\) \\(0, 1\\).*mask or label map"),
    ("plus30000", "median of its body is 29\\d\\d\\d HU"),
    ("tiny", "only 3x3x3 voxels"),
])
def test_nonsense_images_are_refused_in_one_line(tmp_path, case, problem, capsys):
    from HepatoblastomaSegLib.cli import main
    from HepatoblastomaSegLib.io import Geometry, Volume

    ct = _ct()
    rng = np.random.default_rng(0)
    if case == "blank":
        volume = ct.with_array((-1000 + rng.normal(0, 12, ct.array.shape)).astype(np.int16))
    elif case == "mask":
        volume = ct.with_array((ct.array > 0).astype(np.uint8))
    elif case == "plus30000":
        volume = ct.with_array(np.where(ct.array > -500, ct.array.astype(np.float32) + 30000, ct.array))
    else:
        volume = Volume(rng.normal(0, 100, (3, 3, 3)).astype(np.float32), Geometry((3, 3, 3), (1, 1, 1), (0, 0, 0)))
    path = write_volume(volume, tmp_path / f"{case}.nii.gz")
    assert main(["segment", str(path), "-o", str(tmp_path / "out"), "--no-tta", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err
    assert __import__("re").search(problem, err), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ cohorts
def _manifest(tmp_path, volume, cases=("a", "b"), text=None):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for case in cases:
        write_volume(volume, data / f"{case}.nii.gz")
    (data / "cohort.csv").write_text(text or "case,image\n" + "".join(f"{c},{c}.nii.gz\n" for c in cases))
    return data / "cohort.csv"


class _Log:
    def __init__(self):
        from HepatoblastomaSegLib.progress import NullProgress

        self.progress, self.lines = NullProgress(), []
        self.progress.log = self.lines.append


def test_cohort_resume_keys_on_the_image_checksum_and_the_options_and_says_why(tmp_path, ct_like_volume):
    from HepatoblastomaSegLib.infer.cohort import read_manifest, result_options, run_cohort
    from HepatoblastomaSegLib.infer.predictor import PredictorOptions
    from helpers_hostile import fake_predict

    manifest = _manifest(tmp_path, ct_like_volume)
    out, calls, log = tmp_path / "out", [], _Log()
    options = result_options(PredictorOptions(tta=False), "nifti")

    def run(opts=options, fmt="nifti"):
        return {r["case"]: r["status"] for r in run_cohort(read_manifest(manifest), out, fake_predict(calls),
                                                           fmt=fmt, options=opts, progress=log.progress).rows}

    assert run() == {"a": "ok", "b": "ok"} and calls == ["a", "b"]
    assert run() == {"a": "skipped (finished earlier)", "b": "skipped (finished earlier)"}
    write_volume(ct_like_volume.with_array(ct_like_volume.array // 2), tmp_path / "data" / "a.nii.gz")  # replaced
    assert run() == {"a": "ok", "b": "skipped (finished earlier)"} and calls == ["a", "b", "a"]
    assert "a: recomputing: the image changed since the earlier result" in log.lines
    other = result_options(PredictorOptions(tta=True), "nrrd")
    assert run(other, "nrrd") == {"a": "ok", "b": "ok"}
    assert any(line.startswith("b: recomputing: the options changed (format 'nifti' -> 'nrrd'; tta False -> True)")
               for line in log.lines), log.lines
    assert (out / "b" / "segmentation.seg.nrrd").is_file()


def test_cohort_table_is_not_rewritten_after_every_case_and_progress_is_logged(tmp_path, monkeypatch):
    from HepatoblastomaSegLib.infer import cohort
    from helpers_hostile import fake_predict

    (tmp_path / "cohort.csv").write_text("case,image\n" + "".join(f"c{i},missing{i}.nii.gz\n" for i in range(200)))
    writes = []
    real = cohort.write_text_atomic
    monkeypatch.setattr(cohort, "write_text_atomic", lambda path, text: (writes.append(path), real(path, text)))
    log = _Log()
    result = cohort.run_cohort(cohort.read_manifest(tmp_path / "cohort.csv"), tmp_path / "out", fake_predict(),
                               progress=log.progress)
    assert result.n_failed == 200 and "missing199.nii.gz: file or folder not found" in result.rows[-1]["error"]
    assert 1 <= len(writes) <= 10  # the old code rewrote the whole table 200 times: quadratic in the cohort
    monkeypatch.setattr(cohort, "TABLE_EVERY_S", 0.0)
    cohort.run_cohort(cohort.read_manifest(tmp_path / "cohort.csv"), tmp_path / "out2", fake_predict(),
                      progress=log.progress)
    assert "cohort: 1/200 case(s) done, 1 failed, 0 s" in log.lines


def test_reserved_case_ids_and_a_folder_as_manifest_are_refused(tmp_path):
    from HepatoblastomaSegLib.infer.cohort import read_manifest

    for case in ("cohort_summary.csv", ".hidden"):
        (tmp_path / "m.csv").write_text(f"case,image\n{case},x.nii.gz\n")
        with pytest.raises(InputError, match="is reserved"):
            read_manifest(tmp_path / "m.csv")
    with pytest.raises(InputError, match="this is a folder, not a manifest CSV file"):
        read_manifest(tmp_path)


def test_formula_case_ids_are_neutralised_in_cohort_summary_and_per_case_csv(tmp_path, ct_like_volume):
    import csv

    from HepatoblastomaSegLib.evaluate.report import csv_text
    from HepatoblastomaSegLib.infer.cohort import read_manifest, run_cohort
    from helpers_hostile import fake_predict

    manifest = _manifest(tmp_path, ct_like_volume, cases=(), text="case,image\n=1+SUM(9),nope.nii.gz\n@cmd,x.nii\n")
    result = run_cohort(read_manifest(manifest), tmp_path / "out", fake_predict())
    with open(result.summary_path, newline="") as handle:
        assert [row["case"] for row in csv.DictReader(handle)] == ["'=1+SUM(9)", "'@cmd"]
    text = csv_text([{"case": "+HYPERLINK(x)", "rater": "-R1", "vpe_pct": -3.5}], ["case", "rater", "vpe_pct"])
    assert text.splitlines()[1] == "'+HYPERLINK(x),'-R1,-3.5"


# ------------------------------------------------------------------------------------------------ outputs
def test_consensus_never_writes_over_an_input(tmp_path, binary_mask, capsys):
    from HepatoblastomaSegLib.cli import main

    paths = [write_volume(binary_mask, tmp_path / f"R{i}.nii.gz") for i in (1, 2, 3)]
    before = paths[0].read_bytes()
    for output in (str(paths[0]), str(tmp_path / "." / "R1.nii.gz")):
        assert main(["consensus", *map(str, paths), "-o", output]) == 2
        assert "is one of the input masks" in capsys.readouterr().err
    assert paths[0].read_bytes() == before


def test_segment_refuses_before_any_work_to_write_over_its_input_or_into_a_file(tmp_path, ct_like_volume, capsys,
                                                                                monkeypatch):
    from HepatoblastomaSegLib.cli import main
    from HepatoblastomaSegLib.infer import runner

    monkeypatch.setattr(runner, "read_volume", lambda *a, **k: pytest.fail("read the input before refusing"))
    image = write_volume(ct_like_volume, tmp_path / "segmentation.nii.gz")
    before = image.read_bytes()
    assert main(["segment", str(image), "-o", str(tmp_path), "--progress", "none"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and image.read_bytes() == before
    assert main(["segment", str(image), "-o", str(tmp_path), "--format", "nrrd", "--progress", "none"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and image.read_bytes() == before
    (tmp_path / "taken.txt").write_text("mine")
    assert main(["segment", str(image), "-o", str(tmp_path / "taken.txt"), "--progress", "none"]) == 2
    assert "this is an existing file" in capsys.readouterr().err


def test_two_writers_of_one_folder_do_not_interleave(tmp_path, ct_like_volume):
    import threading

    from HepatoblastomaSegLib.infer.outputs import is_finished, write_prediction
    from HepatoblastomaSegLib.infer.result import Prediction
    from HepatoblastomaSegLib.io.atomic import folder_lock

    out = tmp_path / "out"
    mask = ct_like_volume.with_array((ct_like_volume.array > 0).astype(np.uint8))
    prediction = Prediction(mask, mask.with_array(np.zeros(mask.array.shape, np.float32)), {"run": "B"})
    with folder_lock(out):  # run A is writing
        writer = threading.Thread(target=write_prediction, args=(prediction, out))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and not any(out.iterdir())  # B waits for A's lock, writes nothing meanwhile
        with pytest.raises(InputError, match="another hbseg run is writing into this output folder"):
            with folder_lock(out, wait=False):
                pass
    writer.join(10)
    assert is_finished(out)


def test_a_second_cohort_run_on_the_same_folder_is_refused(tmp_path, ct_like_volume):
    from HepatoblastomaSegLib.infer.cohort import read_manifest, run_cohort
    from HepatoblastomaSegLib.io.atomic import folder_lock
    from helpers_hostile import fake_predict

    manifest = _manifest(tmp_path, ct_like_volume)
    with folder_lock(tmp_path / "out"):
        with pytest.raises(InputError, match="another hbseg run"):
            run_cohort(read_manifest(manifest), tmp_path / "out", fake_predict())


def test_partial_files_of_a_killed_run_are_removed_by_the_next(tmp_path, ct_like_volume):
    from HepatoblastomaSegLib.infer.cohort import read_manifest, run_cohort
    from helpers_hostile import fake_predict

    manifest = _manifest(tmp_path, ct_like_volume)
    out = tmp_path / "out"
    run_cohort(read_manifest(manifest), out, fake_predict())
    stale = [out / ".cohort_summary.x1y2.partial.csv", out / "a" / ".segmentation.k9j.partial.nii.gz",
             out / "b" / ".entropy.abc.partial.nii"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    run_cohort(read_manifest(manifest), out, fake_predict())  # both cases finished: skipped, still cleaned
    assert not any(path.exists() for path in stale)
    assert not list(out.rglob("*.partial*"))


def test_debug_keeps_exit_code_2(tmp_path, capsys):
    from HepatoblastomaSegLib.cli import main

    assert main(["--debug", "consensus", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"),
                 "-o", str(tmp_path / "c.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("hbseg: error:")


def test_a_header_bomb_is_refused_by_the_cli_before_torch_is_imported(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bomb = nifti_header_bomb(tmp_path / "bomb.nii.gz", (1024, 1024, 1024))
    code = ("import sys; from HepatoblastomaSegLib.cli import main; "
            f"rc = main(['segment', {str(bomb)!r}, '-o', {str(tmp_path / 'out')!r}]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and done.stdout.strip() == "False", (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"hbseg: error: {bomb}: image declares 1073741824 voxels (1024x1024x1024), more than the limit of "
        f"{DEFAULT_MAX_VOXELS}; no clinical scan is that large (set {MAX_VOXELS_ENV} to raise the limit)"]
    assert not (tmp_path / "out").exists()


def test_qform_sform_warning_reaches_the_summary(tmp_path):
    from HepatoblastomaSegLib.bundle import load_bundle
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
    from helpers_hostile import patch_nifti
    from tiny_models import tiny_bundle

    path = patch_nifti(write_volume(_ct(), tmp_path / "ct.nii"), 280 + 12, "f", 500.0)
    predictor = Predictor(load_bundle(tiny_bundle(tmp_path / "models")), PredictorOptions(device="cpu", tta=False))
    summary = predictor.predict(read_volume(path)).summary
    assert any("qform and sform disagree" in warning for warning in summary["warnings"])


def test_a_single_segment_write_removes_partials_of_a_killed_run(tmp_path, ct_like_volume):
    from HepatoblastomaSegLib.infer.outputs import write_prediction
    from HepatoblastomaSegLib.infer.result import Prediction

    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".segmentation.q1w2.partial.nii.gz"
    stale.write_bytes(b"\0" * 4096)
    mask = ct_like_volume.with_array((ct_like_volume.array > 0).astype(np.uint8))
    write_prediction(Prediction(mask, mask.with_array(np.zeros(mask.array.shape, np.float32)), {}), out)
    assert not stale.exists() and sorted(p.name for p in out.iterdir()) == [
        "entropy.nii.gz", "segmentation.nii.gz", "summary.json"]


def test_a_rerun_in_the_other_format_leaves_no_stale_outputs(tmp_path, ct_like_volume):
    from HepatoblastomaSegLib.infer.outputs import write_prediction
    from HepatoblastomaSegLib.infer.result import Prediction

    mask = ct_like_volume.with_array((ct_like_volume.array > 0).astype(np.uint8))
    prediction = Prediction(mask, mask.with_array(np.zeros(mask.array.shape, np.float32)), {})
    write_prediction(prediction, tmp_path / "out")
    write_prediction(prediction, tmp_path / "out", fmt="nrrd")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "entropy.nrrd", "segmentation.seg.nrrd", "summary.json"]
