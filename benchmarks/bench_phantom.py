"""Phantom generation time per case: the demo phantom against the full variety (``generate_case(variety=...)``).

Prints wall and CPU seconds per case (generation in memory, no files) and the grid, for small and full-size CT and
MRI. CPU seconds are the steadier figure on a shared machine (wall time grows with everyone else's load).

Usage: ``python benchmarks/bench_phantom.py --cases 4 --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4, help="cases per setting (default 4)")
    parser.add_argument("--full-cases", type=int, default=3, help="cases per full-size setting (default 3)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from HepatoblastomaSegLib.phantom import generate_case

    results = []
    for modality, size, n in (("ct", "small", args.cases), ("mri", "small", args.cases),
                              ("ct", "full", args.full_cases), ("mri", "full", args.full_cases)):
        for variety in ("demo", "full"):
            rows = []
            for index in range(n):
                wall, cpu = time.perf_counter(), time.process_time()
                case = generate_case(modality, args.seed, index, size, variety=variety)
                rows.append({"index": index, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                             "size_xyz": list(case.image.geometry.size), "megavoxels": case.image.array.size / 1e6,
                             "age_years": case.age_months / 12})
                del case
            summary = {"modality": modality, "size": size, "variety": variety, "cases": rows,
                       "median_wall_s": float(np.median([r["wall_s"] for r in rows])),
                       "median_cpu_s": float(np.median([r["cpu_s"] for r in rows])),
                       "max_cpu_s": float(np.max([r["cpu_s"] for r in rows])),
                       "median_megavoxels": float(np.median([r["megavoxels"] for r in rows]))}
            results.append(summary)
            print(f"{modality:3s} {size:5s} {variety:4s}: median {summary['median_wall_s']:.2f} s wall, "
                  f"{summary['median_cpu_s']:.2f} s CPU (max {summary['max_cpu_s']:.2f}), "
                  f"median {summary['median_megavoxels']:.1f} M voxels", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
