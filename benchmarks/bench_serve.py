"""A warm worker against a fresh process: what the Slicer module's second *Segment tumor* click costs.

Per round, on the demo CT (``hbseg demo``'s full-size phantom, or ``--image``): a fresh ``hbseg segment`` process
(wall time from start to exit: Python, torch and the library imported, the model loaded, the case segmented and
written), then one ``hbseg serve --stdio`` worker answering the same request twice (wall time from sending the
request to its final answer). The ratio fresh / second request is what a warm worker gains; the summaries'
``seconds`` say where the time goes (``liver``: the CT liver step, ``ct-liver-demo`` on the body box, reported
per round as ``second_request_liver_s``). Run by hand:

    python benchmarks/bench_serve.py --rounds 2 --json serve.json          (--tta for 8-flip TTA, --device cuda)

``--glibc-default-allocator`` runs both with glibc's allocator as it comes (``MALLOC_MMAP_MAX_`` set to glibc's
default, so ``hbseg`` does not switch to keeping freed memory; see ``HepatoblastomaSegLib.allocator``): the
before/after of that setting on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_results  # noqa: E402

CLI = [sys.executable, "-m", "HepatoblastomaSegLib.cli"]
#: glibc's own default for MALLOC_MMAP_MAX_: setting it keeps glibc's allocator as it comes.
GLIBC_DEFAULT_ALLOCATOR = {"MALLOC_MMAP_MAX_": "65536"}


def demo_ct(folder: Path) -> Path:
    from HepatoblastomaSegLib.cli.demo import DEMO_SEED
    from HepatoblastomaSegLib.phantom import read_manifest, write_dataset

    manifest = write_dataset(folder / "phantom", "ct", 1, DEMO_SEED, "full")
    return manifest.parent / read_manifest(manifest)[0]["image"]


def options_args(model: str, device: str, tta: bool) -> list[str]:
    return ["--model", model, "--device", device, "--tta" if tta else "--no-tta"]


def fresh_run(image: Path, out: Path, model: str, device: str, tta: bool, env: dict[str, str] | None = None
              ) -> float:
    t0 = time.perf_counter()
    subprocess.run([*CLI, "segment", str(image), "-o", str(out), *options_args(model, device, tta),
                    "--progress", "none"], check=True, env=env)
    return time.perf_counter() - t0


def worker_runs(image: Path, out: Path, model: str, device: str, tta: bool, n: int = 2,
                env: dict[str, str] | None = None) -> tuple[float, list[float]]:
    """(seconds until the worker said it is ready, [seconds per request])."""
    t0 = time.perf_counter()
    worker = subprocess.Popen([*CLI, "serve", "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              bufsize=1, env=env)
    ready = json.loads(worker.stdout.readline())
    assert ready.get("ready"), ready
    ready_s = time.perf_counter() - t0
    times = []
    for index in range(n):
        request = {"id": str(index), "image": str(image), "output": str(out / str(index)),
                   "options": {"model": model, "device": device, "tta": tta}}
        t0 = time.perf_counter()
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        while True:
            answer = json.loads(worker.stdout.readline())
            if "status" in answer:
                break
        assert answer["status"] == "ok", answer
        times.append(time.perf_counter() - t0)
    worker.stdin.close()
    worker.wait(60)
    return ready_s, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="CT to segment (default: the demo CT, generated)")
    parser.add_argument("--model", default="ct-demo")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--tta", action="store_true", help="8-flip TTA (default: off, as the demo)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--glibc-default-allocator", action="store_true",
                        help="keep glibc's allocator as it comes in both (the 'before' of keeping freed memory)")
    args = parser.parse_args()
    env = {**os.environ, **GLIBC_DEFAULT_ALLOCATOR} if args.glibc_default_allocator else None
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        image = args.image or demo_ct(tmp)
        rounds = []
        for index in range(args.rounds):
            fresh_s = fresh_run(image, tmp / f"fresh{index}", args.model, args.device, args.tta, env)
            ready_s, (first_s, second_s) = worker_runs(image, tmp / f"worker{index}", args.model, args.device,
                                                       args.tta, env=env)
            seconds = json.loads((tmp / f"worker{index}" / "1" / "summary.json").read_text())["seconds"]
            fresh_seconds = json.loads((tmp / f"fresh{index}" / "summary.json").read_text())["seconds"]
            rounds.append({"fresh_process_s": round(fresh_s, 2), "worker_ready_s": round(ready_s, 2),
                           "worker_first_request_s": round(first_s, 2), "worker_second_request_s": round(second_s, 2),
                           "fresh_over_second": round(fresh_s / second_s, 2),
                           "second_request_liver_s": seconds.get("liver"),
                           "fresh_summary_seconds": fresh_seconds, "second_summary_seconds": seconds})
    ratios = [r["fresh_over_second"] for r in rounds]
    return write_results({"image": str(args.image or "demo CT (full size)"), "model": args.model,
                          "device": args.device, "tta": args.tta,
                          "allocator": "glibc as it comes" if args.glibc_default_allocator else "hbseg's default",
                          "rounds": rounds,
                          "median_fresh_over_second": statistics.median(ratios)}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
