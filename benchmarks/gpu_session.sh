#!/usr/bin/env bash
# One device session (15 minutes of GPU time in all, start-up included): the GPU figures issues #3, #4 and #5 ask
# for, then the demo models trained on the GPU in the time that is left.
#   Prepare here:   bash benchmarks/device_wheels.sh      (MONAI, SimpleITK, nibabel into the ignored .whl/)
#   Run there:      device run, carry [".whl"], timeout_s 590, command: bash benchmarks/gpu_session.sh
#   Dry run here:   DEVICE=cpu QUICK=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh   (proves the script)
# A follow-up session can run a subset: STEPS (default "infer preprocess train models demo_infer"; also
# "cuda_tests": the CUDA-only pytest tests; "infer_ours": bench_infer of ours alone, no baselines;
# "infer_compile": the paper network through hbseg segment --compile, without and with TTA; "memory": hbseg segment
# of a 512x512x200 CT with the paper network in a fresh process, peak GPU memory and RAM), MODELS (default
# all three), INIT_FROM (continue the models from DIR/<name> bundles of an earlier session, carried along),
# DEMO_MODEL (the trained bundle for the realistic inference run; default the one trained here), MATCHED_MODES and
# INFER_ONLY (bench_infer's --matched-image-mode and --only for the two inference steps), TRAIN_SIZE (small,
# the default, or full: train on full-size phantoms, which ct-demo needed to transfer to full-size CTs; see
# Resources/Models/train_demo_models.py).
# What comes back ($OUT, at most 8 files): session.log, infer_paper.json, infer_paper_compiled.json, memory_paper.json,
# preprocess.json, train.json, infer_demo.json, models.tar.gz (the three bundles + training logs, without checkpoints or caches).
# Every step has its own time limit, most wanted first, so a slow step cannot eat the session.
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
T0=$(date +%s)
OUT="${OUT:-/tmp/hbseg_gpu_out}"; mkdir -p "$OUT"
DEVICE="${DEVICE:-cuda}"
DEADLINE_S="${DEADLINE_S:-555}"          # all work ends by then (the run's timeout_s leaves a little more)
STEPS=" ${STEPS:-infer preprocess train models demo_infer} "
MODELS="${MODELS:-ct-demo mri-liver-demo mri-demo}"
DEMO_MODEL="${DEMO_MODEL:-demo_models_work/ct-demo}"
MATCHED_MODES="${MATCHED_MODES:-3,bilinear}"   # image interpolation of the stock pipeline doing our work
INFER_ONLY="${INFER_ONLY:+--only $INFER_ONLY}"  # bench_infer --only: the settings to time (default all)
has() { [[ "$STEPS" == *" $1 "* ]]; }
LOG="$OUT/session.log"
elapsed() { echo $(( $(date +%s) - T0 )); }
step() { echo "=== [$(elapsed) s] $*" | tee -a "$LOG"; }
# A step's time limit: its own, or what is left before the deadline if that is less.
limit() { local left=$(( DEADLINE_S - $(elapsed) - 10 )); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }

source benchmarks/device_site.sh >> "$LOG" 2>&1 || { echo "installing .whl failed" | tee -a "$LOG"; exit 1; }
step "start on $(hostname); python $(python3 -c 'import sys; print(sys.version.split()[0])')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG" 2>&1
python3 -c "import torch, monai, SimpleITK, nibabel; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  'monai', monai.__version__, 'SimpleITK', SimpleITK.Version_VersionString(), 'nibabel', nibabel.__version__)" \
  >> "$LOG" 2>&1 || { echo "imports failed" | tee -a "$LOG"; exit 1; }

# Training cohorts for the demo models: CPU only, single-threaded and niced, beside the benchmarks (16 cores).
CASES="${CASES:-40}"
TRAIN_SIZE="${TRAIN_SIZE:-small}"; SIZE_TAG=""; [ "$TRAIN_SIZE" = full ] && SIZE_TAG="-full"
mkdir -p demo_models_work
for spec in "ct 1000" "mri 1002"; do
  set -- $spec
  has models && [[ "$MODELS" == *"$1"* ]] || continue
  OMP_NUM_THREADS=1 nice -n 19 python3 -m HepatoblastomaSegLib.cli phantom --modality "$1" --cases "$CASES" \
    --seed "$2" --size "$TRAIN_SIZE" -o "demo_models_work/$1-train$SIZE_TAG-s$2-n$CASES" --progress none \
    > "/tmp/phantom_$1.log" 2>&1 &
done

if [ -n "${QUICK:-}" ]; then PAPER=""; REPEATS=1; TRAIN_PRESET="--preset tiny"; else PAPER="--paper-width"; REPEATS=2; TRAIN_PRESET=""; fi
# 0. The CUDA-only tests (CI has no GPU): the GPU paths of the summary and of the resampling against the CPU's.
if has cuda_tests; then
  step "pytest, CUDA-only tests"
  timeout "$(limit 90)" python3 -m pytest -q -p no:cacheprovider Testing/test_infer_regions_torch.py \
    Testing/test_preprocess_resample.py -k "cuda or torch or disc or region or diameter" >> "$LOG" 2>&1 \
    || echo "CUDA tests failed: $?" | tee -a "$LOG"
fi
# 1. Inference (#4): the paper-width network (random weights: speed only) on the CT size the issue names (512x512x101
#    at 0.705x0.705x2.5 mm), planned on that CT (80 windows), ours without and
#    with 8-flip TTA, and MONAI's stock pipeline on the same weights; one warm-up then $REPEATS timed runs each.
if has infer; then
  step "bench_infer $PAPER"
  timeout "$(limit 240)" python3 benchmarks/bench_infer.py $PAPER --baseline --baseline-matched \
    --matched-image-mode "$MATCHED_MODES" --full-image $INFER_ONLY --device "$DEVICE" --repeats "$REPEATS" \
    --json "$OUT/infer_paper.json" >> "$LOG" 2>&1 || echo "bench_infer failed: $?" | tee -a "$LOG"
fi
# 1a. A trained model carried from an earlier session: ours vs MONAI stock on masks that mean something.
if has demo_infer && [ -f "$DEMO_MODEL/bundle.json" ]; then
  step "bench_infer with $DEMO_MODEL"
  timeout "$(limit 200)" python3 benchmarks/bench_infer.py --model "$DEMO_MODEL" --baseline --baseline-matched \
    --matched-image-mode "$MATCHED_MODES" --full-image $INFER_ONLY --device "$DEVICE" \
    --repeats "$REPEATS" --json "$OUT/infer_demo.json" >> "$LOG" 2>&1 || echo "bench_infer (demo) failed: $?" | tee -a "$LOG"
  DEMO_DONE=1
fi
# 1b. Memory (#4): a 512x512x200 CT through hbseg segment in a fresh process, paper network on the CT's own grid.
if has memory; then
  step "bench_memory $PAPER"
  timeout "$(limit 200)" python3 benchmarks/bench_memory.py $PAPER --device "$DEVICE" --gpu-memory-gb 8 \
    --json "$OUT/memory_paper.json" \
    >> "$LOG" 2>&1 || echo "bench_memory failed: $?" | tee -a "$LOG"
fi
# 1d. Ours only (no stock baselines): a quick re-measurement after a change, eager, without and with TTA.
if has infer_ours; then
  step "bench_infer $PAPER, ours only"
  timeout "$(limit 120)" python3 benchmarks/bench_infer.py $PAPER --device "$DEVICE" --repeats "$REPEATS" \
    --only ours_no_tta_model_loaded,ours_tta8_model_loaded --json "$OUT/infer_paper_ours.json" >> "$LOG" 2>&1 \
    || echo "bench_infer (ours only) failed: $?" | tee -a "$LOG"
fi
# 1c. The same network compiled (hbseg segment --compile): the compilation falls in the warm-up (first_run_s). One
#     timed round (compiling twice, for two batch shapes, may take a minute or more).
if has infer_compile; then
  step "bench_infer $PAPER --compile"
  timeout "$(limit 180)" python3 benchmarks/bench_infer.py $PAPER --compile --device "$DEVICE" --repeats 1 \
    --only ours_no_tta_model_loaded,ours_no_tta_model_loaded_compiled,ours_tta8_model_loaded,ours_tta8_model_loaded_compiled \
    --json "$OUT/infer_paper_compiled.json" >> "$LOG" 2>&1 || echo "bench_infer --compile failed: $?" | tee -a "$LOG"
fi
# 2. Preprocessing (#3): the torch path on the GPU (<= 0.5 s), SimpleITK on 16 threads for comparison.
if has preprocess; then
  step "bench_preprocess"
  timeout 60 python3 benchmarks/bench_preprocess.py --device "$DEVICE" --threads 16 --skip-n4 \
    --json "$OUT/preprocess.json" >> "$LOG" 2>&1 || echo "bench_preprocess failed: $?" | tee -a "$LOG"
fi
# 3. Training throughput (#5): the real loop vs pure compute, paper network, bf16, batch 2, 12 workers; memory.
if has train; then
  step "bench_train $TRAIN_PRESET"
  timeout 130 python3 benchmarks/bench_train.py $TRAIN_PRESET --device "$DEVICE" --workers 12 \
    --json "$OUT/train.json" >> "$LOG" 2>&1 || echo "bench_train failed: $?" | tee -a "$LOG"
fi

# 4. Demo models (#5), the three at once on the one GPU (they are small), each stopped by a time limit that leaves
#    room to pack the results. The held-out evaluation runs later on a CPU (--stage evaluate).
wait
LEFT=$(( DEADLINE_S - $(elapsed) - 45 ))
if has models && [ "$LEFT" -lt 60 ]; then step "no time left for the demo models ($LEFT s)"; fi
if has models && [ "$LEFT" -ge 60 ]; then
cat /tmp/phantom_*.log | tail -4 >> "$LOG"
LIMIT_MIN=$(python3 -c "print(round(max($LEFT - 25, 30) / 60, 2))")  # from hbseg train's start; imports come first
step "demo models, time limit $LIMIT_MIN min each"
EXTRA=""; [ -n "${QUICK:-}" ] && EXTRA="--quick --cases $CASES --epochs 2 --iters 3"
[ -n "${INIT_FROM:-}" ] && EXTRA="$EXTRA --init-from $INIT_FROM"
EXTRA="$EXTRA --train-size $TRAIN_SIZE"
for name in $MODELS; do
  timeout $(( LEFT + 40 )) python3 Resources/Models/train_demo_models.py --stage train --models "$name" $EXTRA \
    --device "$DEVICE" --workers 4 --progress none --time-limit-min "$LIMIT_MIN" > "/tmp/train_$name.log" 2>&1 &
done
wait
for name in $MODELS; do
  echo "--- $name" >> "$LOG"; tail -3 "/tmp/train_$name.log" >> "$LOG"; cp "/tmp/train_$name.log" "demo_models_work/$name/" 2>/dev/null
done
step "pack models"
tar czf "$OUT/models.tar.gz" --exclude='cache' --exclude='checkpoint-*' --exclude='best_model.safetensors' \
  --exclude='train_set' $(for name in $MODELS; do echo "demo_models_work/$name"; done) >> "$LOG" 2>&1
fi

# 5. If time is left: ours vs MONAI stock with the GPU-trained ct-demo (a mask comparison that means something).
LEFT=$(( DEADLINE_S - $(elapsed) ))
if has demo_infer && [ -z "${DEMO_DONE:-}" ] && [ -f "$DEMO_MODEL/bundle.json" ] && [ "$LEFT" -gt 25 ]; then
  step "bench_infer with the new ct-demo"
  timeout "$LEFT" python3 benchmarks/bench_infer.py --model "$DEMO_MODEL" --baseline --device "$DEVICE" \
    --repeats 1 --json "$OUT/infer_demo.json" >> "$LOG" 2>&1 || echo "bench_infer (ct-demo) failed: $?" | tee -a "$LOG"
fi
step "done"
ls -l "$OUT" >> "$LOG"
