"""The background-process runner of the Slicer module (HepatoblastomaSegRunner/process.py), with real processes:
a small script that prints the library's own JSON progress lines and sleeps, and the real ``hbseg segment
--progress json`` on a tiny model. Checks the state machine (idle -> running -> done | failed | cancelled), the
progress it reads, the log, and that cancel kills the whole process tree (a launcher and the child it started)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "HepatoblastomaSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from HepatoblastomaSegLib.progress import JsonLinesProgress, parse_json_line  # noqa: E402
from HepatoblastomaSegRunner.process import (STAGE_WEIGHTS, ProcessRunner, ProgressUpdate, RunState,  # noqa: E402
                                             child_environment, format_duration, overall_fraction, python_command)

from helpers_synthetic import synthetic_case  # noqa: E402
from tiny_models import tiny_bundle  # noqa: E402

# A stand-in for PythonSlicer + hbseg: it starts a child (as the launcher starts the interpreter), writes both
# PIDs, then prints progress with the library's JsonLinesProgress and ends as MODE says.
FAKE = textwrap.dedent("""\
    import subprocess, sys, time
    sys.path.insert(0, sys.argv[3])
    from HepatoblastomaSegLib.progress import JsonLinesProgress
    mode, pid_file = sys.argv[1], sys.argv[2]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(pid_file, "w").write(f"{__import__('os').getpid()} {child.pid}")
    progress = JsonLinesProgress(sys.stdout)
    print("a plain line that is not JSON", flush=True)
    for stage, steps in (("read", 1), ("preprocess", 2), ("inference", 4)):
        for i in range(steps + 1):
            progress(stage, i / steps, f"{stage} {i}/{steps}")
            time.sleep(0.02 if mode != "hang" else 0.2)
    if mode == "hang":
        time.sleep(120)
    child.kill()
    if mode == "ok":
        progress.done("all good")
        sys.exit(0)
    if mode == "fail":
        progress.error("input.nrrd: this does not look like a CT in Hounsfield units")
        print("hbseg: error: input.nrrd: this does not look like a CT in Hounsfield units", file=sys.stderr)
        sys.exit(2)
    if mode == "silent":
        sys.exit(0)
    if mode == "crash":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("ModuleNotFoundError: No module named 'monai'", file=sys.stderr)
        sys.exit(1)
    if mode == "orphan":  # a grandchild keeps the pipes open after this process has exited
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        progress.done("done, but a grandchild holds stdout")
        sys.exit(0)
""")


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_hbseg.py"
    script.write_text(FAKE)

    def make(mode: str, **kwargs) -> tuple[ProcessRunner, Path]:
        pid_file = tmp_path / f"{mode}.pids"
        runner = ProcessRunner([sys.executable, str(script), mode, str(pid_file), str(REPO)],
                               env=child_environment(), log_path=tmp_path / f"{mode}.log", **kwargs)
        return runner, pid_file
    return make


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():  # a zombie waiting to be reaped by init is dead for our purposes
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    return True


def _wait_dead(pids, timeout_s=5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _pids(pid_file: Path, timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid_file.is_file() and len(pid_file.read_text().split()) == 2:
            return [int(p) for p in pid_file.read_text().split()]
        time.sleep(0.02)
    raise AssertionError("the fake process never wrote its PIDs")


def test_successful_run_goes_idle_running_done_with_progress_and_log(fake):
    runner, _ = fake("ok")
    assert runner.state is RunState.IDLE and not runner.state.finished
    runner.start()
    assert runner.state is RunState.RUNNING and runner.pid is not None
    seen = []
    deadline = time.monotonic() + 30
    while runner.state is RunState.RUNNING and time.monotonic() < deadline:
        seen += runner.poll()
        if runner.progress is not None:
            seen_overall = runner.progress.overall
            assert 0.0 <= seen_overall <= 1.0
        time.sleep(0.01)
    assert runner.state is RunState.DONE and runner.returncode == 0
    assert runner.done_message == "all good" and runner.error_message == ""
    assert [r["stage"] for r in seen if r["event"] == "progress"] == ["read"] * 2 + ["preprocess"] * 3 + \
        ["inference"] * 5
    assert seen[-1]["event"] == "done" and runner.progress.percent == 100
    assert runner.stdout_lines == ["a plain line that is not JSON"]
    log = runner.log_path.read_text()
    assert log.startswith("$ ") and "a plain line that is not JSON" in log and "done (exit status 0" in log
    with pytest.raises(RuntimeError, match="make a new one"):
        runner.start()


def test_failed_run_reports_the_libraries_error_line(fake):
    runner, _ = fake("fail")
    assert runner.start().wait(30) is RunState.FAILED
    assert runner.returncode == 2
    assert runner.error_message == "input.nrrd: this does not look like a CT in Hounsfield units"
    assert runner.stderr_tail() == ["hbseg: error: input.nrrd: this does not look like a CT in Hounsfield units"]


def test_a_zero_exit_without_done_line_or_a_crash_is_a_failure(fake):
    silent, _ = fake("silent")
    assert silent.start().wait(30) is RunState.FAILED
    assert "without reporting that it finished" in silent.error_message
    crash, _ = fake("crash")
    assert crash.start().wait(30) is RunState.FAILED
    assert crash.error_message == "ModuleNotFoundError: No module named 'monai'" and crash.returncode == 1
    lenient, _ = fake("silent", require_done_event=False)
    assert lenient.start().wait(30) is RunState.DONE


def test_cancel_kills_the_whole_process_tree(fake):
    runner, pid_file = fake("hang")
    runner.start()
    parent, child = _pids(pid_file)
    assert parent == runner.pid and _alive(child)
    deadline = time.monotonic() + 20
    while runner.progress is None and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.02)
    assert runner.progress is not None, "no progress line arrived"
    start = time.monotonic()
    assert runner.cancel() is True
    assert time.monotonic() - start < 5
    assert runner.state is RunState.CANCELLED
    assert _wait_dead([parent, child]) == [], "a process of the tree survived the cancel"
    runner.poll()
    assert runner.state is RunState.CANCELLED  # a late poll does not turn it into "failed"
    assert runner.cancel() is False
    assert "cancelled by the user" in runner.log_path.read_text()


def test_a_grandchild_holding_the_pipes_does_not_keep_the_run_open(fake):
    runner, _ = fake("orphan")
    start = time.monotonic()
    try:
        assert runner.start().wait(20) is RunState.DONE
        assert time.monotonic() - start < 15
    finally:
        if runner._process is not None:  # the orphan is in the runner's process group
            try:
                os.killpg(runner.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass


def test_a_missing_executable_fails_at_start(tmp_path):
    runner = ProcessRunner([str(tmp_path / "no-such-python"), "-c", "pass"])
    with pytest.raises(OSError):
        runner.start()
    assert runner.state is RunState.FAILED and "could not start" in runner.error_message


def test_overall_progress_follows_the_stage_order_and_never_goes_back():
    order = [name for name, _ in STAGE_WEIGHTS]
    assert order == ["read", "preprocess", "inference", "resample", "liver", "write"]  # the predictor's order
    assert sum(w for _, w in STAGE_WEIGHTS) == pytest.approx(1.0)
    values, previous = [], 0.0
    for stage in order:
        for fraction in (0.0, 0.5, 1.0):
            previous = overall_fraction(stage, fraction, previous)
            values.append(previous)
    assert values == sorted(values) and values[-1] == pytest.approx(1.0)
    assert overall_fraction("unknown stage", 0.9, 0.3) == 0.3
    assert overall_fraction("inference", 0.0, 0.9) == 0.9
    assert overall_fraction("done", 0.0) == 1.0


def test_progress_text_and_durations():
    assert format_duration(None) == "" and format_duration(0.2) == "<1 s" and format_duration(42) == "42 s"
    assert format_duration(185) == "3 min 05 s" and format_duration(3720) == "1 h 02 min"
    update = ProgressUpdate.from_record({"event": "progress", "stage": "inference", "fraction": 0.42,
                                         "eta_s": 3.1, "message": "window batch 2/4"})
    assert update.text() == "Running the network: 42 %, about 3 s left (window batch 2/4)"
    assert update.percent == round(100 * (0.05 + 0.15 + 0.55 * 0.42))


def test_real_hbseg_progress_lines_are_what_the_runner_reads(tmp_path):
    """The lines the GUI parses are exactly what ``hbseg segment --progress json`` prints: every stdout line of the
    real command is a progress record, the keys are those JsonLinesProgress writes, the stages are the ones the
    overall bar knows, and it ends with a "done" record naming the summary."""
    bundle = tiny_bundle(tmp_path / "models")
    image, _, _ = synthetic_case("ct", shape_zyx=(8, 36, 40))
    from HepatoblastomaSegLib.io import write_volume

    write_volume(image, tmp_path / "ct.nrrd")
    argv = python_command(sys.executable, REPO, ["segment", str(tmp_path / "ct.nrrd"), "-o", str(tmp_path / "out"),
                                                 "--model", str(bundle), "--format", "nrrd", "--progress", "json",
                                                 "--device", "cpu", "--no-tta"])
    runner = ProcessRunner(argv, env=child_environment(), cwd=tmp_path, log_path=tmp_path / "hbseg.log")
    assert runner.start().wait(120) is RunState.DONE, runner.log_text()

    raw = [line.split("[stdout] ", 1)[1] for line in runner.log_path.read_text().splitlines() if "[stdout] " in line]
    assert raw and runner.stdout_lines == []  # nothing on stdout but progress records
    independent = [json.loads(line) for line in raw]
    assert runner.events == independent == [parse_json_line(line) for line in raw]

    class Capture:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    capture = Capture()
    JsonLinesProgress(capture).emit("progress", "inference", 0.5, 1.0, "m")
    keys = set(json.loads(capture.text))
    assert all(set(record) == keys for record in independent)
    stages = {r["stage"] for r in independent if r["event"] == "progress"}
    assert stages <= {name for name, _ in STAGE_WEIGHTS}, f"stages the overall bar does not know: {stages}"
    assert independent[-1]["event"] == "done"
    assert Path(independent[-1]["message"]) == tmp_path / "out" / "summary.json"
    assert runner.progress.percent == 100


# --- the warm worker (hbseg serve --stdio) -------------------------------------------------------------------------

def _serve_argv() -> list[str]:
    return python_command(sys.executable, REPO, ["serve", "--stdio"])


@pytest.mark.slow
def test_warm_worker_keeps_the_model_between_jobs_and_survives_a_cancel_and_a_crash(tmp_path):
    """Real workers on a tiny model: two jobs on one worker (the second loads no model), a cancel that the worker
    answers (it stays warm), a worker killed in the middle of a job (the job fails and says so) and the fresh worker
    started for the next job."""
    import signal

    pytest.importorskip("slicer")  # the jobs read their volume from a real MRML node
    from slicer_env import add_volume_node

    from HepatoblastomaSegMRML import headless_environment
    from HepatoblastomaSegMRML.background import SegmentJob, SegmentRequest
    from HepatoblastomaSegRunner.worker import WarmWorker

    env = headless_environment()
    bundle = tiny_bundle(tmp_path / "models")
    image, _, _ = synthetic_case("ct", shape_zyx=(8, 36, 40))
    node = add_volume_node(env.scene, image, "ct")
    warm = WarmWorker(_serve_argv, env=child_environment())
    try:
        def job(tta=False, name="job"):
            request = SegmentRequest(model_path=bundle, modality="ct", device="cpu", tta=tta)
            return SegmentJob(node, request, work_dir=tmp_path / f"{name}-{time.monotonic_ns()}", worker=warm.get())

        first, second = job(name="first"), job(name="second")
        first.start()
        assert first.wait(180) is RunState.DONE, first.log_text()
        second.start()
        assert second.wait(180) is RunState.DONE, second.log_text()
        assert first.runner.pid == second.runner.pid and warm.started == 1
        seconds = [json.loads((j.output_dir / "summary.json").read_text())["seconds"] for j in (first, second)]
        assert seconds[1]["load_model"] < 0.05 < seconds[0]["load_model"]
        result = second.load_results(env.scene)
        assert result.segmentation_node.GetScene() is env.scene
        assert second.runner.progress.percent == 100 and second.runner.events  # the worker's progress lines

        cancelled = job(tta=True, name="cancelled")
        cancelled.start()
        assert cancelled.cancel() and cancelled.state is RunState.CANCELLED
        assert warm.current.alive and warm.get().pid == first.runner.pid  # answered the cancel: still warm
        assert not (cancelled.output_dir / "summary.json").exists()

        crashed = job(name="crashed")
        crashed.start()
        os.killpg(crashed.runner.pid, signal.SIGKILL)
        assert crashed.wait(60) is RunState.FAILED
        assert "worker ended" in crashed.error_message and "signal 9" in crashed.error_message

        after = job(name="after")
        assert warm.started == 2 and after.worker.pid != first.runner.pid
        after.start()
        assert after.wait(180) is RunState.DONE, after.log_text()
    finally:
        warm.shutdown()
        env.scene.Clear(1)


# A stand-in worker that never answers (a request stuck where the library does not look for a cancel).
DEAF_WORKER = textwrap.dedent("""\
    import json, sys, time
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "id" in request:
            print(json.dumps({"event": "progress", "id": request["id"], "stage": "inference", "fraction": 0.1,
                              "eta_s": None, "message": ""}), flush=True)
    time.sleep(120)
    """)


def test_a_worker_that_does_not_answer_a_cancel_is_killed_and_replaced(tmp_path):
    from HepatoblastomaSegRunner.worker import WarmWorker

    script = tmp_path / "deaf.py"
    script.write_text(DEAF_WORKER)
    warm = WarmWorker(lambda: [sys.executable, str(script)])
    try:
        worker = warm.get()
        run = worker.submit(tmp_path / "in.nrrd", tmp_path / "out", {"tta": False})
        deadline = time.monotonic() + 30
        while run.progress is None and time.monotonic() < deadline:
            run.poll()
            time.sleep(0.05)
        assert run.progress is not None and run.progress.stage == "inference"
        assert run.cancel(timeout_s=0.5) and run.state is RunState.CANCELLED
        assert not worker.alive
        replacement = warm.get()
        assert replacement.pid != worker.pid and replacement.alive and warm.started == 2
    finally:
        warm.shutdown()
