"""The cohort runner's per-case outputs hook (:class:`CaseOutputs`): another front end's files, same resume, lock,
failures and table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from HepatoblastomaSegLib.errors import InputError
from HepatoblastomaSegLib.infer.cohort import SKIPPED, CaseOutputs, CohortCase, run_cohort


class TextOutputs(CaseOutputs):
    """One ``result.json`` per case holding the prediction and the resume key; case "bad" cannot be written."""

    def why_recompute(self, case, case_dir, key):
        try:
            return None if json.loads((case_dir / "result.json").read_text())["key"] == key else "key changed"
        except OSError:
            return "no earlier result"

    def finished_summary(self, case, case_dir):
        return json.loads((case_dir / "result.json").read_text())["summary"]

    def write(self, case, prediction, case_dir, key):
        if case.case == "bad":
            raise InputError("cannot write this case", case_dir)
        case_dir.mkdir(parents=True, exist_ok=True)
        (case_dir / "result.json").write_text(json.dumps({"key": key, "summary": prediction}))
        return prediction


def test_run_cohort_writes_through_the_outputs_hook_and_resumes_with_it(tmp_path):
    images = []
    for name in ("a", "b", "bad"):
        images.append(tmp_path / f"{name}.txt")
        images[-1].write_text(name)
    cases = [CohortCase(p.stem, p, "ct") for p in images]
    calls, rows = [], []

    def predict(case, progress):
        calls.append(case.case)
        return {"device": "cpu", "tumor_volume_ml": len(calls)}

    out = tmp_path / "out"
    result = run_cohort(cases, out, predict, outputs=TextOutputs(), on_case_done=rows.append)
    assert [r["status"] for r in result.rows] == ["ok", "ok", "failed"] and rows == result.rows
    assert "cannot write this case" in result.rows[2]["error"] and not (out / "bad" / "result.json").exists()
    assert json.loads((out / "a" / "result.json").read_text())["summary"]["tumor_volume_ml"] == 1

    images[1].write_text("b, changed")  # the resume key holds the image's SHA256
    again = run_cohort(cases, out, predict, outputs=TextOutputs())
    assert [r["status"] for r in again.rows] == [SKIPPED, "ok", "failed"] and calls == ["a", "b", "bad", "b", "bad"]
    with open(Path(again.summary_path), newline="") as handle:
        table = {r["case"]: r for r in csv.DictReader(handle)}
    assert table["a"]["tumor_volume_ml"] == "1" and table["b"]["tumor_volume_ml"] == "4"
