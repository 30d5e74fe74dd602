#!/usr/bin/env bash
# One device session (15 minutes of GPU time in all): the GPU figures issues #3, #4 and #5 ask for.
# Prepare here:   bash benchmarks/device_wheels.sh
# Then run there: device run, carry [".whl"], timeout_s 580, command: bash benchmarks/gpu_session.sh
# Everything writes JSON into $OUT (what comes back). Each step has its own time limit so one slow step cannot eat
# the session; order = most wanted first.
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT="${OUT:-/tmp/hbseg_gpu_out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
# 1. Inference, paper-width network (random weights: speed only), full-size phantom CT, with and without TTA, plus
#    MONAI's stock pipeline on the same weights (#4: <= 2 s / <= 4 s, >= 3x faster than stock).
timeout 200 python3 benchmarks/bench_infer.py --paper-width --baseline --json "$OUT/infer_paper.json" > "$OUT/infer_paper.log" 2>&1
# 2. Preprocessing on the GPU path (#3: <= 0.5 s) and N4 seconds.
timeout 90 python3 benchmarks/bench_preprocess.py --threads 16 --json "$OUT/preprocess.json" > "$OUT/preprocess.log" 2>&1
# 3. Training throughput vs pure compute, bf16, batch 2, paper preset (#5: >= 85 %, <= 12 GB).
timeout 150 python3 benchmarks/bench_train.py --device cuda --workers 12 --json "$OUT/train.json" > "$OUT/train.log" 2>&1
ls -l "$OUT"
