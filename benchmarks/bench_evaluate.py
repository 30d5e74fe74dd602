"""Benchmark ``hbseg evaluate`` on a full-size simulated CT cohort: wall time and peak memory.

Target (issue): 48 cases of 512 x 512 x ~100 voxels, 3 raters and 2 models, at most 2 minutes and 4 GB on 2 cores.

The cohort comes from :mod:`HepatoblastomaSegLib.evaluate.simulate` (lobulated tumours of 60-110 mm with simulated
raters and models) and is written once into ``--workdir`` (reused on later runs). The evaluation runs as a child
process (``python -m HepatoblastomaSegLib.cli evaluate``) so that its peak RSS is measured alone.

    .venv/bin/python benchmarks/bench_evaluate.py                       # masks only
    .venv/bin/python benchmarks/bench_evaluate.py --entropy MPCT        # + a float32 entropy map for MPCT
    .venv/bin/python benchmarks/bench_evaluate.py --cases 4 --size small  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from HepatoblastomaSegLib.evaluate.simulate import write_simulated_cohort  # noqa: E402

SIZES = {"full": ((100, 512, 512), (2.5, 0.7, 0.7)), "small": ((40, 128, 128), (2.5, 1.2, 1.2))}


def build(workdir: Path, cases: int, size: str, entropy: list[str]) -> Path:
    tag = f"{size}_{cases}" + "".join(f"_{m}_entropy" for m in entropy)
    folder = workdir / tag
    csv_path = folder / "cohort.csv"
    if csv_path.exists():
        return csv_path
    shape, spacing = SIZES[size]
    start = time.perf_counter()
    # One z extent per case (90-110 slices), as a real cohort has; written in batches of one shape each.
    rng = np.random.default_rng(0)
    depths = rng.integers(shape[0] - 10, shape[0] + 11, cases) if size == "full" else np.full(cases, shape[0])
    rows = []
    for i, depth in enumerate(depths):
        sub = folder / f"part{i:03d}"
        part = write_simulated_cohort(sub, 1, shape_zyx=(int(depth), *shape[1:]), spacing_mm_zyx=spacing, seed=i,
                                      entropy=entropy)
        header, line = part.read_text().splitlines()[:2]
        cells = line.split(",")
        cells[0] = f"case{i:03d}"
        cells[1:] = [f"part{i:03d}/{c}" for c in cells[1:]]
        rows.append(",".join(cells))
        print(f"\rbuilding cohort: {i + 1}/{cases}", end="", file=sys.stderr, flush=True)
    (folder / "cohort.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    print(f"\nbuilt {cases} cases in {time.perf_counter() - start:.0f} s under {folder}", file=sys.stderr)
    return csv_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=48)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--entropy", default="", metavar="MPCT[,MACT]",
                        help="models that also get a float32 entropy map (the paper has one for MPCT)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hbseg_bench_evaluate"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    entropy = [m for m in args.entropy.split(",") if m]
    csv_path = build(args.workdir, args.cases, args.size, entropy)
    out = csv_path.parent / f"report_w{args.workers}"
    command = [sys.executable, "-m", "HepatoblastomaSegLib.cli", "evaluate", str(csv_path), "--raters", "R1,R2,R3",
               "--models", "MPCT,MACT", "--workers", str(args.workers), "--progress", "none", "-o", str(out)]
    if entropy:
        command += ["--entropy", ",".join(f"{m}={m}_entropy" for m in entropy)]
    if args.no_figures:
        command.append("--no-figures")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
        return done.returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss_mb = usage.ru_maxrss / 1024.0
    # CPU seconds are reported beside wall time: on a shared machine the wall time also measures the neighbours.
    cpu_s = usage.ru_utime + usage.ru_stime
    result = {"cases": args.cases, "size": args.size, "shape_zyx": SIZES[args.size][0], "entropy_maps": entropy,
              "workers": args.workers, "figures": not args.no_figures, "wall_s": round(wall_s, 1),
              "cpu_s": round(cpu_s, 1), "load_avg_1min_after": round(os.getloadavg()[0], 2),
              "peak_rss_mb": round(peak_rss_mb), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    print(done.stdout.strip())
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
