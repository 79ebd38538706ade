#!/usr/bin/env bash
# The equal-budget CPU experiment (design.md section 9): WaveGlow variants trained from scratch on the same data,
# the same model size and the same CPU minutes each, then scored on the validation clips.
#
#   bash recipes/ljspeech/cpu_experiment.sh MINUTES [--data-root DIR] [--out DIR] [--jobs N] [--check-every M]
#
# Stages:
#   1 train     plain | spectral | source | source_spectral | source_free (the source's phase running free in
#               training too) | source_filter | source_harmonics (the source in the signal path; design.md
#               section 9), each for MINUTES of its own CPU time (train.budget_clock: cpu) on one thread,
#               --jobs side by side, in segments of --check-every minutes (--resume in between); after each
#               segment the pitch of 6 validation clips x 3 s is scored (OUT/VARIANT/checks.jsonl: when GPE first
#               reaches 20%)
#   2 evaluate  every variant's last.pt on the validation clips, whole, beside the recordings and Griffin-Lim:
#               NLL, DNSMOS P.808, pitch errors, MR-STFT, log-mel L1 (OUT/eval/results.json)
#   3 energy    the best variant (pitch first: GPE <= 20%, then DNSMOS P.808) again with the energy prior, trained
#               and scored the same way
#   4 report    OUT/results.md (the table) and OUT/spectrograms.png (one validation clip, every system, seed 0);
#               each evaluation also writes its HTML report (OUT/eval/report/index.html: listen and look)
# A stage's output that exists is kept (delete it to redo); an interrupted variant resumes from its last.pt.
# Needs pip install 'wavflow[metrics]' (DNSMOS). Runs at low priority (nice) unless NICE=0.
set -euo pipefail

MINUTES=${1:?usage: cpu_experiment.sh MINUTES [--data-root DIR] [--out DIR] [--jobs N] [--check-every M]}
shift
DATA=../shared/data/LJSpeech-1.1-mini
OUT=exp/cpu_experiment
JOBS=2
CHECK=10
VARIANTS=${VARIANTS:-"plain spectral source source_spectral source_free source_filter source_harmonics"}
while [ $# -gt 0 ]; do
  case $1 in
    --data-root) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --check-every) CHECK=$2; shift 2 ;;
    *) echo "cpu_experiment.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
CONF=$HERE/conf/waveglow.cpu.yaml
PY=${PYTHON:-python}
NICE=${NICE:-19}
run() { nice -n "$NICE" "$@"; }
mkdir -p "$OUT"

overrides() {  # the model_config switches of a variant
  case $1 in
    plain) echo "" ;;
    spectral) echo "model_config.spectral_weight=1.0" ;;
    source) echo "model_config.source=true" ;;
    source_free) echo "model_config.source=true model_config.source_phase=free" ;;
    source_spectral) echo "model_config.source=true model_config.spectral_weight=1.0" ;;
    source_filter) echo "model_config.source=true model_config.source_filter=true" ;;
    source_harmonics) echo "model_config.source=true model_config.source_harmonics=48" ;;
    *+energy) echo "$(overrides "${1%+energy}") model_config.energy_prior=true" ;;
    *) echo "cpu_experiment.sh: unknown variant $1" >&2; exit 2 ;;
  esac
}

train_variant() {  # VARIANT: MINUTES in segments of CHECK, each followed by a pitch check
  local v=$1 dir=$OUT/$1 done_minutes=0 resume="" segment
  mkdir -p "$dir"
  [ -f "$dir/minutes" ] && done_minutes=$(cat "$dir/minutes")
  [ -f "$dir/last.pt" ] && resume=--resume
  while [ "$done_minutes" -lt "$MINUTES" ]; do
    segment=$(( MINUTES - done_minutes < CHECK ? MINUTES - done_minutes : CHECK ))
    # shellcheck disable=SC2046
    run "$PY" -m wavflow.train "$CONF" data.root="$DATA" $(overrides "$v") --out-dir "$dir" $resume \
      --max-minutes "$segment" >>"$dir/train.log" 2>&1
    resume=--resume
    done_minutes=$(( done_minutes + segment ))
    echo "$done_minutes" >"$dir/minutes"
    run "$PY" -m wavflow.evaluate "$dir/last.pt" --names "$v" --data-root "$DATA" --max-clips 6 --max-seconds 3 \
      --no-nll --griffin-lim-iters 0 --metrics pitch --json "$dir/check-$done_minutes.json" >>"$dir/eval.log" 2>&1
    "$PY" "$HERE/cpu_experiment.py" check "$dir" "$done_minutes"
  done
}

train_all() {  # VARIANT...: --jobs at a time
  local v running=0
  for v in "$@"; do
    train_variant "$v" &
    running=$(( running + 1 ))
    if [ "$running" -ge "$JOBS" ]; then wait -n; running=$(( running - 1 )); fi
  done
  wait
}

evaluate() {  # NAME VARIANT...: all of them in one evaluation (references scored once)
  local name=$1 ckpts=() v
  shift
  [ -f "$OUT/$name/results.json" ] && return 0
  mkdir -p "$OUT/$name"
  for v in "$@"; do ckpts+=("$OUT/$v/last.pt"); done
  run "$PY" -m wavflow.evaluate "${ckpts[@]}" --names "$(IFS=,; echo "$*")" --data-root "$DATA" \
    --metrics dnsmos,pitch --json "$OUT/$name/results.json" --plot "$OUT/$name/spectrograms.png" \
    --report "$OUT/$name/report" >"$OUT/$name/eval.log" 2>&1
}

echo "stage 1: train $VARIANTS, $MINUTES min each, $JOBS at a time"
# shellcheck disable=SC2086
train_all $VARIANTS
echo "stage 2: evaluate"
# shellcheck disable=SC2086
evaluate eval $VARIANTS
BEST=$("$PY" "$HERE/cpu_experiment.py" best "$OUT/eval/results.json")
echo "stage 3: $BEST with the energy prior"
train_all "$BEST+energy"
evaluate eval-energy "$BEST+energy"
echo "stage 4: report"
"$PY" "$HERE/cpu_experiment.py" report "$OUT" "$MINUTES" "$OUT/eval/results.json" "$OUT/eval-energy/results.json"
echo "wrote $OUT/results.md and $OUT/spectrograms.png"
