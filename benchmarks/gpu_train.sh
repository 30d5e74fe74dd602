#!/usr/bin/env bash
# One GPU session for the demo models on the full variety (issue 17): the mixed training cohort (demo and
# full-variety phantoms of one modality, with every variety the generator has now) made on the machine's cores, then
# the runs in RUNS side by side on the one GPU, with the same cohort, split and seed. A run is MODEL:START[+dr]:
#   MODEL      a bundled demo model (ct-demo, ct-liver-demo, mri-demo, mri-liver-demo); its bundle gives the
#              modality and the target (the runs of one session share a modality, hence one cohort)
#   continued  from the bundled model's weights (lr LR_CONTINUED, poly schedule)
#   scratch    from random weights (lr LR_SCRATCH, poly schedule), with the bundled model's plans and width
#   +dr        with --domain-randomisation DR (SynthSeg-style renderings for that share of the patches)
# e.g. RUNS="ct-demo:continued ct-demo:continued+dr" (an A/B of domain randomisation) or
#      RUNS="mri-demo:scratch mri-liver-demo:scratch" (both MRI models from the start).
# Each comes back as a bundle for the evaluation on a CPU (benchmarks/real_scans.py, held-out phantoms).
#   Prepare here:  bash benchmarks/device_wheels.sh
#   Run there:     device run, carry [".whl"], timeout_s 590, command: bash benchmarks/gpu_train.sh
#   Dry run here:  SKIP_WHEELS=1 PY=.venv/bin/python DEVICE=cpu QUICK=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_train.sh
# What comes back ($OUT): session.log, cohort_manifest.csv, models.tar.gz (the bundles with their training logs,
# learning curves, plans and split; no checkpoints, no caches).
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
T0=$(date +%s)
OUT="${OUT:-/tmp/hbseg_gpu_out}"; mkdir -p "$OUT"
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
DEADLINE_S="${DEADLINE_S:-555}"                   # all work ends by then (timeout_s leaves a little more)
SEED="${SEED:-1000}"
DEMO_CASES="${DEMO_CASES:-32}"; FULL_CASES="${FULL_CASES:-64}"; SIZE="${SIZE:-full}"
EPOCHS="${EPOCHS:-16}"; ITERS="${ITERS:-250}"; VAL_EVERY="${VAL_EVERY:-2}"
WORKERS="${WORKERS:-6}"                           # data loader workers per run: the runs share the cores
RUNS="${RUNS:-ct-demo:continued ct-demo:scratch}"
LR_CONTINUED="${LR_CONTINUED:-0.003}"; LR_SCRATCH="${LR_SCRATCH:-0.01}"; DR="${DR:-0.5}"
VERSION="${VERSION:-}"                            # the new bundles' version (default: the bundled one's, +"-gpu")
WORK="${WORK:-demo_models_work_gpu}"
if [ -n "${QUICK:-}" ]; then DEMO_CASES=2; FULL_CASES=3; SIZE=small; EPOCHS=2; ITERS=2; VAL_EVERY=1; WORKERS=1; fi
LOG="$OUT/session.log"
elapsed() { echo $(( $(date +%s) - T0 )); }
step() { echo "=== [$(elapsed) s] $*" | tee -a "$LOG"; }
fail() { step "FAILED: $*"; tail -20 /tmp/phantom_*.log 2>/dev/null | tee -a "$LOG"; exit 1; }

source benchmarks/device_site.sh >> "$LOG" 2>&1 || fail "installing .whl"
step "start on $(hostname), $(nproc) cores"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG" 2>&1
"$PY" -c "import torch, monai, SimpleITK; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  'monai', monai.__version__, 'SimpleITK', SimpleITK.Version_VersionString())
import HepatoblastomaSegLib.cli, HepatoblastomaSegLib.phantom, HepatoblastomaSegLib.train.loop" >> "$LOG" 2>&1 \
  || { tail -5 "$LOG"; fail "imports"; }

# 0. The runs, checked before anything is made: each names a bundled model and a start, no run twice (they would
#    write into one folder), all of one modality (one cohort).
bundle_field() { "$PY" -c "import json; b = json.load(open('Resources/Models/$1/bundle.json'))
f = '$2'; print(b['network']['width'] if f == 'width' else b['labels'][1]['name'] if f == 'target' else b[f])"; }
MODALITY=""
seen=" "
for run in $RUNS; do
  model="${run%%:*}"; how="${run#*:}"
  case "$how" in continued|scratch|continued+dr|scratch+dr) ;;
    *) fail "run $run: write MODEL:continued or MODEL:scratch, optionally with +dr" ;; esac
  [[ "$seen" != *" $run "* ]] || fail "run $run is named twice"
  seen="$seen$run "
  [ -f "Resources/Models/$model/bundle.json" ] || fail "run $run: no bundled model Resources/Models/$model"
  m=$(bundle_field "$model" modality) || fail "run $run: unreadable bundle.json"
  [ -z "$MODALITY" ] || [ "$MODALITY" = "$m" ] || fail "runs of one session must share a modality ($MODALITY, $m)"
  MODALITY="$m"
done
[ -n "$MODALITY" ] || fail "RUNS is empty"

# 1. The cohort: demo cases 0.., full-variety cases 100.. of series SEED (the numbering of train_demo_models.py's
#    mixed cohort), one process per core, then one manifest over both.
COH="$WORK/$MODALITY-train-mixed-s$SEED-d$DEMO_CASES-f$FULL_CASES"
CORES=$(nproc)
step "cohort $COH: $DEMO_CASES demo + $FULL_CASES full-variety $MODALITY phantoms, size $SIZE, $CORES processes"
OMP_NUM_THREADS=1 "$PY" -m HepatoblastomaSegLib.cli phantom --modality "$MODALITY" --cases "$DEMO_CASES" \
  --seed "$SEED" --size "$SIZE" --workers "$CORES" -o "$COH/demo" --progress none > /tmp/phantom_demo.log 2>&1 \
  || fail "demo phantoms"
OMP_NUM_THREADS=1 "$PY" -m HepatoblastomaSegLib.cli phantom --modality "$MODALITY" --variety full \
  --cases "$FULL_CASES" --seed "$SEED" --first-index 100 --size "$SIZE" --workers "$CORES" -o "$COH/full" \
  --progress none > /tmp/phantom_full.log 2>&1 || fail "full-variety phantoms"
"$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'Resources/Models')
from train_demo_models import write_mixed_manifest; write_mixed_manifest(Path('$COH'))" >> "$LOG" 2>&1 \
  || fail "mixed manifest"
cp "$COH/manifest.csv" "$OUT/cohort_manifest.csv"
tail -2 /tmp/phantom_full.log >> "$LOG"

# 2. The runs, side by side; each stops at the epoch past which another would end after the deadline and keeps the
#    weights of its best validation so far. Runs of the same model and rendering share a preprocessing cache: the
#    first fills it with every core, the others start once it is complete (its files are written atomically, a
#    case's JSON last), instead of preprocessing the same cases at the same time (2.5 min of the first session went
#    to that). A domain-randomised run caches the tissue maps too, so it has a cache of its own.
NOTE="Trained on synthetic phantoms, for demonstration and testing only, not for clinical use."
CASES_TOTAL=$(( $(wc -l < "$COH/manifest.csv") - 1 ))
declare -A filler=()
names=()
for run in $RUNS; do
  model="${run%%:*}"; how="${run#*:}"; start_from="${how%+dr}"
  target=$(bundle_field "$model" target); width=$(bundle_field "$model" width)
  version="${VERSION:-$(bundle_field "$model" version)-gpu}"
  case "$start_from" in
    continued) start=(--init-weights "Resources/Models/$model" --lr "$LR_CONTINUED") ;;
    scratch) start=(--plans "Resources/Models/$model/plans.json" --width "$width" --lr "$LR_SCRATCH") ;;
  esac
  extra=(); cache="$WORK/cache-$model"
  if [ "$how" != "$start_from" ]; then extra=(--domain-randomisation "$DR"); cache="$cache-dr"; fi
  name="$model-${how/+/-}"; names+=("$name")
  if [ -n "${filler[$cache]:-}" ]; then
    while [ "$(find "$cache" -name '*.json' 2>/dev/null | wc -l)" -lt "$CASES_TOTAL" ] \
      && kill -0 "${filler[$cache]}" 2>/dev/null; do sleep 2; done
    prep=()
  else
    prep=(--preprocess-workers "$CORES")
  fi
  LIMIT_MIN=$("$PY" -c "print(round(max($DEADLINE_S - $(elapsed) - 40, 60) / 60, 2))")
  step "training $name ($target): $EPOCHS x $ITERS iterations at most, time limit $LIMIT_MIN min"
  "$PY" -m HepatoblastomaSegLib.cli train "$COH" --modality "$MODALITY" --target "$target" -o "$WORK/$name" \
    "${start[@]}" "${extra[@]}" --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --val-fraction 0.2 \
    --val-every "$VAL_EVERY" --seed "$SEED" --schedule poly --name "$model" --version "$version" --fp16-weights \
    --card-note "$NOTE" --device "$DEVICE" --workers "$WORKERS" --progress none --time-limit-min "$LIMIT_MIN" \
    --cache-dir "$cache" "${prep[@]}" > "/tmp/train_$name.log" 2>&1 &
  [ -z "${filler[$cache]:-}" ] && filler[$cache]=$!
done
wait

# 3. Pack what the evaluation here needs.
step "pack"
packed=()
for name in "${names[@]}"; do
  echo "--- $name" >> "$LOG"; tail -4 "/tmp/train_$name.log" >> "$LOG"
  if [ -d "$WORK/$name/training" ]; then
    cp "/tmp/train_$name.log" "$WORK/$name/training/train_stdout.log"
    packed+=("$WORK/$name")
  fi
done
[ ${#packed[@]} -gt 0 ] && tar czf "$OUT/models.tar.gz" --exclude='checkpoint-*' --exclude='best_model.safetensors' \
  --exclude='train_set' --exclude='val_set' "${packed[@]}" >> "$LOG" 2>&1
step "done"
ls -l "$OUT" >> "$LOG"
