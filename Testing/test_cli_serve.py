"""``hbseg serve --stdio`` as a real process on a tiny model: two requests in one process give the bytes a fresh
``hbseg segment`` gives, the second without loading the model again; a bad request gets an error line and the worker
goes on; a cancel (running or queued) is answered; shutdown and a closed stdin end it with status 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HepatoblastomaSegLib.cli.serve import option_arguments, segment_parser
from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.io import write_volume

from helpers_synthetic import synthetic_case
from tiny_models import tiny_bundle

REPO = Path(__file__).resolve().parents[1]


class Served:
    """The worker process: send JSON lines, read its answers (progress lines kept apart)."""

    def __init__(self, cwd: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "HepatoblastomaSegLib.cli", "serve", "--stdio"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1, cwd=cwd)
        self.progress: list[dict] = []
        ready = self.next_answer()
        assert ready.get("ready") is True, ready

    def send(self, *messages) -> None:
        for message in messages:
            self.process.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.process.stdin.flush()

    def next_answer(self) -> dict:
        """The next line that is not a progress record (a final answer, or the ready line)."""
        while True:
            line = self.process.stdout.readline()
            assert line, "the worker ended: " + self.process.stderr.read()[-3000:]
            record = json.loads(line)  # every stdout line is JSON
            if "event" in record:
                self.progress.append(record)
                continue
            return record

    def close(self, timeout_s: float = 60) -> int:
        self.process.stdin.close()
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture
def case(tmp_path):
    bundle = tiny_bundle(tmp_path / "models")
    image, _, _ = synthetic_case("ct", shape_zyx=(8, 36, 40))
    path = tmp_path / "ct.nrrd"
    write_volume(image, path)
    return bundle, path


def _request(request_id, image, output, bundle, **options) -> dict:
    return {"id": request_id, "image": str(image), "output": str(output),
            "options": {"model": str(bundle), "device": "cpu", "tta": False, **options}}


def _arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segmentation.nii.gz"))),
            sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "entropy.nii.gz"))))


@pytest.mark.slow
def test_two_requests_one_model_load_and_the_bytes_of_hbseg_segment(case, tmp_path):
    bundle, image = case
    fresh = subprocess.run([sys.executable, "-m", "HepatoblastomaSegLib.cli", "segment", str(image), "-o",
                            str(tmp_path / "fresh"), "--model", str(bundle), "--device", "cpu", "--no-tta",
                            "--progress", "none"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr

    served = Served(tmp_path)
    served.send(_request("a", image, tmp_path / "a", bundle), _request("b", image, tmp_path / "b", bundle))
    first, second = served.next_answer(), served.next_answer()
    assert served.close() == 0  # stdin closed: the worker ends by itself
    assert first == {"id": "a", "status": "ok", "summary": str(tmp_path / "a" / "summary.json")}
    assert second == {"id": "b", "status": "ok", "summary": str(tmp_path / "b" / "summary.json")}
    for name in ("a", "b"):
        for served_array, fresh_array in zip(_arrays(tmp_path / name), _arrays(tmp_path / "fresh")):
            assert np.array_equal(served_array, fresh_array)
    seconds = [json.loads((tmp_path / n / "summary.json").read_text())["seconds"] for n in ("a", "b")]
    assert seconds[1]["load_model"] < 0.05 < seconds[0]["load_model"]  # kept loaded, not loaded again
    # Progress lines are hbseg segment's, tagged with their request.
    assert {p["id"] for p in served.progress} == {"a", "b"}
    assert {p["stage"] for p in served.progress} >= {"read", "preprocess", "inference", "write"}


def test_bad_requests_and_cancels_are_answered_and_the_worker_goes_on(case, tmp_path):
    bundle, image = case
    served = Served(tmp_path)
    served.send("this is not JSON",
                {"id": "x", "image": str(tmp_path / "missing.nrrd"), "output": str(tmp_path / "x"),
                 "options": {"model": str(bundle), "device": "cpu"}},
                {"id": "y", "image": str(image), "output": str(tmp_path / "y"), "options": {"overlap": 2}},
                {"id": "z", "image": str(image), "output": str(tmp_path / "z"), "options": {"manifest": "m.csv"}},
                _request("ok", image, tmp_path / "ok", bundle))
    bad_line, missing, overlap, reserved, ok = (served.next_answer() for _ in range(5))
    assert bad_line["status"] == "error" and bad_line["id"] is None and "line 1" in bad_line["message"]
    assert missing["status"] == "error" and "missing.nrrd" in missing["message"]
    assert overlap["status"] == "error" and "--overlap" in overlap["message"]
    assert reserved["status"] == "error" and "manifest" in reserved["message"]
    assert ok["status"] == "ok" and Path(ok["summary"]).is_file()
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

    # The same worker: cancel a running and a queued request, then shut down.
    served.send(_request("run", image, tmp_path / "run", bundle, tta=True), {"cancel": "run"},
                _request("queued", image, tmp_path / "queued", bundle), {"cancel": "queued"},
                _request("after", image, tmp_path / "after", bundle))
    running, queued, after = served.next_answer(), served.next_answer(), served.next_answer()
    assert running["id"] == "run" and running["status"] == "cancelled"
    assert queued == {"id": "queued", "status": "cancelled", "message": "cancelled before it started"}
    assert after["status"] == "ok"
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "queued").exists()
    served.send({"shutdown": True}, _request("late", image, tmp_path / "late", bundle))
    assert served.process.wait(60) == 0
    assert not (tmp_path / "late").exists()


def test_options_are_hbseg_segments_own():
    _, segment = segment_parser()
    assert option_arguments({"tta": False, "batch_size": 2, "keep_largest": True, "crop_to_body": True,
                             "model": "ct-demo", "liver_model": None}, segment) == \
        ["--no-tta", "--batch-size", "2", "--keep-largest", "--crop-to-body", "--model", "ct-demo"]
    for bad in ({"tta": "no"}, {"no_such_option": 1}, {"output": "x"}, {"progress": "bar"}):
        with pytest.raises(ConfigError):
            option_arguments(bad, segment)
