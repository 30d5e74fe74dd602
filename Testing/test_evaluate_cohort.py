"""``hbseg evaluate`` end to end on simulated cohorts on disk, recomputed independently with SimpleITK, MONAI,
medpy and SciPy; plus the bad-input cases and the import invariant."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage, stats

from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import ConfigError, GeometryError, InputError
from HepatoblastomaSegLib.evaluate.cohort import EvaluationOptions, evaluate_cohort, read_cohort
from HepatoblastomaSegLib.evaluate.regions import disc_footprint
from HepatoblastomaSegLib.evaluate.report import write_report
from HepatoblastomaSegLib.evaluate.simulate import write_simulated_cohort
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_volume

SHAPE = (20, 64, 64)
SPACING_ZYX = (2.5, 0.8, 0.8)
ARGS = ["--raters", "R1,R2,R3", "--models", "MPCT,MACT", "--entropy", "MPCT=MPCT_entropy", "--progress", "none"]


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory) -> Path:
    return write_simulated_cohort(tmp_path_factory.mktemp("cohort"), 5, shape_zyx=SHAPE, spacing_mm_zyx=SPACING_ZYX,
                                  seed=3)


@pytest.fixture(scope="module")
def report(cohort_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["evaluate", str(cohort_csv), *ARGS, "-o", str(out), "--bootstrap", "500"]) == 0
    return out


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def copy_cohort(cohort_csv: Path, tmp_path: Path) -> Path:
    """A private cohort.csv pointing at the shared files (absolute paths), to edit."""
    rows = read_csv(cohort_csv)
    for row in rows:
        for key, value in row.items():
            if key != "case":
                row[key] = str(cohort_csv.parent / value)
    return write_rows(tmp_path / "cohort.csv", rows)


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return path


def independent_case(cohort_csv: Path, row: dict) -> dict:
    """Recompute one case with SimpleITK, MONAI and medpy only."""
    folder = cohort_csv.parent
    images = {k: sitk.ReadImage(str(folder / row[k])) for k in ("R1", "R2", "R3", "MPCT", "MACT")}
    rc = sitk.LabelVoting([images["R1"], images["R2"], images["R3"]], 0)
    rc_array = sitk.GetArrayFromImage(rc).astype(bool)
    spacing_zyx = images["R1"].GetSpacing()[::-1]
    out = {}
    for name in ("R1", "R2", "R3", "MPCT", "MACT"):
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(images[name], rc)
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.Execute(images[name])
        pv_ml = shape.GetPhysicalSize(1) / 1000.0
        mask = sitk.GetArrayFromImage(images[name]).astype(bool)
        hd95 = compute_hausdorff_distance(torch.from_numpy(mask[None, None].astype(np.float32)),
                                          torch.from_numpy(rc_array[None, None].astype(np.float32)),
                                          include_background=True, percentile=95, spacing=list(spacing_zyx)).item()
        out[name] = {"dice": overlap.GetDiceCoefficient(), "pv_ml": pv_ml,
                     "vpe": abs(medpy_binary.ravd(mask, rc_array)) * 100, "hd95": hd95}
    pairs = {}
    labeled = {"Rc": rc, **images}
    names = list(labeled)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap = sitk.LabelOverlapMeasuresImageFilter()
            overlap.Execute(labeled[a], labeled[b])
            pairs[(a, b)] = overlap.GetDiceCoefficient()
    return {"members": out, "pairs": pairs}


def test_report_matches_independent_recomputation(cohort_csv, report):
    cases = read_csv(cohort_csv)
    truth = {row["case"]: independent_case(cohort_csv, row) for row in cases}

    per_case = read_csv(report / "per_case.csv")
    assert list(per_case[0].keys()) == ["case", "rater", "dice_vs_Rc", "pv_ml", "tv_ml", "vpe_pct", "pv_tv",
                                        "hd95_mm", "surface_dice", "flags"]
    assert len(per_case) == 5 * 5
    for row in per_case:
        expected = truth[row["case"]]["members"][row["rater"]]
        assert float(row["dice_vs_Rc"]) == pytest.approx(expected["dice"], abs=1e-12)
        assert float(row["pv_ml"]) == pytest.approx(expected["pv_ml"], rel=1e-9)
        assert float(row["vpe_pct"]) == pytest.approx(expected["vpe"], rel=1e-9)
        assert float(row["hd95_mm"]) == pytest.approx(expected["hd95"], rel=1e-5)
        assert float(row["pv_tv"]) == pytest.approx(float(row["pv_ml"]) / float(row["tv_ml"]), rel=1e-12)

    agreement = read_csv(report / "agreement.csv")
    assert list(agreement[0].keys())[:6] == ["a", "b", "n", "mean", "ci_low", "ci_high"]
    assert len(agreement) == 15 and "boot_ci_low" in agreement[0]
    matrix = read_csv(report / "agreement_matrix.csv")
    cells = {(r[""], k): v for r in matrix for k, v in r.items() if k}
    for row in agreement:
        values = np.array([truth[c["case"]]["pairs"][(row["a"], row["b"])] for c in cases])
        low, high = stats.norm.interval(0.95, loc=values.mean(), scale=stats.sem(values))
        assert float(row["mean"]) == pytest.approx(values.mean(), abs=1e-12)
        assert (float(row["ci_low"]), float(row["ci_high"])) == (pytest.approx(low, abs=1e-12),
                                                                  pytest.approx(high, abs=1e-12))
        printed = f"{values.mean():.2f} ({low:.2f}, {high:.2f})"
        assert cells[(row["a"], row["b"])] == cells[(row["b"], row["a"])] == printed
    assert cells[("Rc", "Rc")] == "1"

    vpe = read_csv(report / "vpe.csv")
    assert list(vpe[0].keys())[:4] == ["rater", "threshold_pct", "count", "percent"]
    for row in vpe:
        errors = [truth[c["case"]]["members"][row["rater"]]["vpe"] for c in cases]
        assert int(row["count"]) == sum(e < float(row["threshold_pct"]) for e in errors)

    pvtv = {r["rater"]: r for r in read_csv(report / "pvtv.csv")}
    assert list(read_csv(report / "pvtv.csv")[0].keys())[:8] == ["rater", "n_gt1", "pct_gt1", "n_le1", "pct_le1",
                                                                 "median", "p_value", "tendency"]
    for name, row in pvtv.items():
        ratios = np.array([float(r["pv_tv"]) for r in per_case if r["rater"] == name])
        assert float(row["p_value"]) == pytest.approx(stats.wilcoxon(ratios - 1).pvalue, rel=1e-12)
        assert int(row["n_gt1"]) == int((ratios > 1).sum()) and row["method"] == "exact"


def test_entropy_summary_matches_scipy_erosion(cohort_csv, report):
    rows = read_csv(report / "entropy.csv")
    assert list(rows[0].keys()) == ["model", "region", "median", "q1", "q3", "n", "n_empty_core"]
    per_case = {"core": [], "boundary": []}
    for row in read_csv(cohort_csv):
        mask = read_volume(cohort_csv.parent / row["MPCT"]).array.astype(bool)
        entropy = read_volume(cohort_csv.parent / row["MPCT_entropy"]).array.astype(np.float64)
        core = ndimage.binary_erosion(mask, structure=disc_footprint(10)[None], border_value=0)
        per_case["core"].append(entropy[core].mean() if core.any() else np.nan)
        per_case["boundary"].append(entropy[mask & ~core].mean())
    for region, values in per_case.items():
        row = next(r for r in rows if r["region"] == region)
        values = np.array(values)
        values = values[~np.isnan(values)]
        assert float(row["median"]) == pytest.approx(np.median(values), rel=1e-6)
        assert int(row["n"]) == values.size
    assert float(next(r for r in rows if r["region"] == "boundary")["median"]) > \
        float(next(r for r in rows if r["region"] == "core")["median"])


def test_report_files_are_self_contained(report):
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert 'src="http' not in html and 'src="figures' not in html
    md = (report / "report.md").read_text()
    for text in ("5 cases evaluated", "SimpleITK", "scipy", "| e < 1 % |", "PV/TV > 1, n (%)", "Tendency",
                 "Rc-MACT", "figures/dice_per_pair.png", "MPCT vs MACT"):
        assert text in md, text
    for name in ("dice_per_pair", "vpe_tolerance", "pv_tv", "bland_altman", "entropy"):
        assert (report / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n_cases"] == 5 and summary["labels"] == ["Rc", "R1", "R2", "R3", "MPCT", "MACT"]
    comparison = read_csv(report / "model_comparison.csv")
    assert [r["reference"] for r in comparison] == ["Rc", "R1", "R2", "R3"]


def test_threads_give_the_same_numbers(cohort_csv):
    cohort = read_cohort(cohort_csv, "R1,R2,R3", "MPCT")
    one = evaluate_cohort(cohort, EvaluationOptions(workers=1, surface=False))
    two = evaluate_cohort(cohort, EvaluationOptions(workers=2, surface=False))
    assert [c.rows for c in one.cases] == [c.rows for c in two.cases]


def test_staple_consensus_sees_the_whole_grid(cohort_csv):
    from HepatoblastomaSegLib.evaluate.consensus import staple

    cohort = read_cohort(cohort_csv, "R1,R2,R3")
    result = evaluate_cohort(cohort, EvaluationOptions(consensus_method="staple", surface=False))
    entry = cohort.cases[0]
    rater_arrays = [read_volume(entry.masks[name]).array for name in ("R1", "R2", "R3")]
    expected, *_ = staple(rater_arrays)
    voxel_ml = float(np.prod(SPACING_ZYX)) / 1000.0
    tv_ml = result.cases[0].rows[0]["tv_ml"]
    assert tv_ml == pytest.approx(int(expected.sum()) * voxel_ml, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- bad input
def test_missing_file_names_case_and_column_and_can_be_skipped(cohort_csv, tmp_path, capsys):
    csv_path = copy_cohort(cohort_csv, tmp_path)
    rows = read_csv(csv_path)
    rows[2]["R2"] = str(tmp_path / "gone.nii.gz")
    write_rows(csv_path, rows)
    with pytest.raises(InputError) as info:
        evaluate_cohort(read_cohort(csv_path, "R1,R2,R3"))
    message = str(info.value)
    assert "case002" in message and "'R2'" in message and "gone.nii.gz" in message and "not found" in message
    assert main(["evaluate", str(csv_path), "--raters", "R1,R2,R3", "-o", str(tmp_path / "r"),
                 "--progress", "none"]) == 2
    assert "--skip-missing" in capsys.readouterr().err

    assert main(["evaluate", str(csv_path), "--raters", "R1,R2,R3", "-o", str(tmp_path / "r"), "--skip-missing",
                 "--progress", "none", "--no-figures"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["n_cases"] == 4 and summary["skipped"][0]["case"] == "case002"
    assert "case002" in (tmp_path / "r" / "report.md").read_text()

    rows[2]["R2"] = ""
    write_rows(csv_path, rows)
    with pytest.raises(InputError, match="case 'case002', column 'R2': no path given"):
        evaluate_cohort(read_cohort(csv_path, "R1,R2,R3"))


def test_non_binary_mask_is_refused(cohort_csv, tmp_path):
    csv_path = copy_cohort(cohort_csv, tmp_path)
    rows = read_csv(csv_path)
    volume = read_volume(rows[1]["MPCT"])
    labels = volume.array.copy()
    labels[labels > 0] = 2
    rows[1]["MPCT"] = str(write_volume(volume.with_array(labels), tmp_path / "labels.nii.gz"))
    write_rows(csv_path, rows)
    with pytest.raises(InputError) as info:
        evaluate_cohort(read_cohort(csv_path, "R1,R2,R3", "MPCT"))
    message = str(info.value)
    assert "case001" in message and "'MPCT'" in message and "binary" in message and "values 2" in message
    assert "labels.nii.gz" in message


def test_geometry_mismatch_is_refused_or_resampled(cohort_csv, tmp_path):
    csv_path = copy_cohort(cohort_csv, tmp_path)
    rows = read_csv(csv_path)
    volume = read_volume(rows[0]["MPCT"])
    g = volume.geometry
    shifted = Geometry(g.size, g.spacing_mm, (g.origin_mm[0] + 1.6, *g.origin_mm[1:]), g.direction)  # 2 voxels in x
    rows[0]["MPCT"] = str(write_volume(Volume(volume.array, shifted), tmp_path / "shifted.nii.gz"))
    write_rows(csv_path, rows)
    with pytest.raises(GeometryError) as info:
        evaluate_cohort(read_cohort(csv_path, "R1,R2,R3", "MPCT"))
    message = str(info.value)
    assert "case000" in message and "'MPCT'" in message and "origin" in message
    assert "--resample-to-reference" in message

    result = evaluate_cohort(read_cohort(csv_path, "R1,R2,R3", "MPCT"),
                             EvaluationOptions(resample_to_reference=True, surface=False))
    row = next(r for r in result.cases[0].rows if r["rater"] == "MPCT")
    assert "resampled" in row["flags"]
    # nearest neighbour onto a grid shifted by whole voxels moves the mask by 2 voxels: same volume
    expected_ml = float(volume.array[:, :, :-2].sum()) * g.voxel_volume_ml
    assert row["pv_ml"] == pytest.approx(expected_ml, rel=1e-9)


def test_empty_consensus_gives_nan_and_flags(cohort_csv, tmp_path):
    csv_path = copy_cohort(cohort_csv, tmp_path)
    rows = read_csv(csv_path)
    volume = read_volume(rows[0]["R1"])
    for rater in ("R1", "R2"):
        rows[0][rater] = str(write_volume(volume.with_array(np.zeros_like(volume.array)), tmp_path / f"{rater}.nii.gz"))
    write_rows(csv_path, rows)
    result = evaluate_cohort(read_cohort(csv_path, "R1,R2,R3", "MPCT"))
    r1 = next(r for r in result.cases[0].rows if r["rater"] == "R1")
    r3 = next(r for r in result.cases[0].rows if r["rater"] == "R3")
    assert r1["tv_ml"] == 0.0 and math.isnan(r1["vpe_pct"]) and math.isnan(r1["pv_tv"]) and math.isnan(r1["dice_vs_Rc"])
    assert "empty_reference" in r1["flags"] and "both_empty" in r1["flags"]
    assert r3["dice_vs_Rc"] == 0.0 and "surface_undefined" in r3["flags"]
    out = write_report(result, tmp_path / "report", figures=True)
    agreement = {(r["a"], r["b"]): r for r in read_csv(out["agreement.csv"])}
    assert agreement[("Rc", "R1")]["n"] == "4" and agreement[("Rc", "R1")]["n_undefined"] == "1"
    vpe = read_csv(out["vpe.csv"])
    assert vpe[0]["n"] == "4" and vpe[0]["n_undefined"] == "1"


def test_cohort_table_errors(cohort_csv, tmp_path):
    rows = read_csv(cohort_csv)
    duplicate = write_rows(tmp_path / "dup.csv", [rows[0], rows[1], rows[0]])
    with pytest.raises(InputError, match=r"duplicate case ids: 'case000' \(lines 2 and 4\)"):
        read_cohort(duplicate, "R1,R2,R3")
    with pytest.raises(ConfigError, match="at least 2 raters, got 1"):
        read_cohort(cohort_csv, "R1")
    with pytest.raises(InputError, match="column\\(s\\) 'R9' not in the cohort table"):
        read_cohort(cohort_csv, "R1,R9")
    with pytest.raises(ConfigError, match="entropy map given for 'MACT', which is not one of the models"):
        read_cohort(cohort_csv, "R1,R2", "MPCT", "MACT=MACT_entropy")
    with pytest.raises(ConfigError, match="unique"):
        read_cohort(cohort_csv, "R1,R2", "R1")
    renamed = read_cohort(cohort_csv, "A=R1,B=R2", "M=MPCT")
    assert renamed.labels == ["Rc", "A", "B", "M"]
    assert renamed.cases[0].masks["A"] == cohort_csv.parent / rows[0]["R1"]


def test_phantom_cohort_if_available(tmp_path):
    phantom = pytest.importorskip("HepatoblastomaSegLib.phantom")
    if not hasattr(phantom, "generate_case") or importlib.util.find_spec("HepatoblastomaSegLib.cli.phantom") is None:
        pytest.skip("the phantom generator (hbseg phantom) is not there yet; the simulated cohort above stands in")
    out = tmp_path / "phantoms"
    assert main(["phantom", "--modality", "ct", "--cases", "2", "--seed", "1", "--size", "small", "-o", str(out)]) == 0
    report = tmp_path / "report"
    assert main(["evaluate", str(out / "manifest.csv"), "--raters", "R1,R2,R3", "--models", "truth=tumor",
                 "--progress", "none", "--no-figures", "-o", str(report)]) == 0
    agreement = {(r["a"], r["b"]): float(r["mean"]) for r in read_csv(report / "agreement.csv")}
    assert agreement[("Rc", "truth")] > 0.7 and agreement[("R1", "R2")] > 0.6
    per_case = read_csv(report / "per_case.csv")
    assert len(per_case) == 2 * 4 and all(float(r["tv_ml"]) > 0 for r in per_case)
    # the phantom's own truth volume: the manifest's tumor_ml, from the same grid
    truth_ml = {r["case"]: float(r["tumor_ml"]) for r in read_csv(out / "manifest.csv") if r.get("tumor_ml")}
    for row in per_case:
        if row["rater"] == "truth" and row["case"] in truth_ml:
            assert float(row["pv_ml"]) == pytest.approx(truth_ml[row["case"]], abs=0.01)


def test_evaluate_never_imports_network_train_infer_or_torch():
    code = ("import sys, HepatoblastomaSegLib.evaluate, HepatoblastomaSegLib.evaluate.cohort, "
            "HepatoblastomaSegLib.evaluate.report, HepatoblastomaSegLib.evaluate.figures, "
            "HepatoblastomaSegLib.evaluate.simulate, HepatoblastomaSegLib.cli.evaluate, "
            "HepatoblastomaSegLib.cli.consensus\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'monai') or "
            "m.startswith(tuple('HepatoblastomaSegLib.' + p for p in ('network', 'train', 'infer')))]\n"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[1])
    assert result.stdout.strip() == ""
    sources = "\n".join(p.read_text() for p in
                        (Path(__file__).parents[1] / "HepatoblastomaSegLib" / "evaluate").glob("*.py"))
    for name in ("network", "train", "infer", "torch", "monai"):
        assert f"import {name}" not in sources and f"from ..{name}" not in sources and f"from {name}" not in sources
