#!/usr/bin/env bash
# Continue a shipped model (the WaveGlow, or with --model wavenet the WaveNet teacher, or with --model student the
# IAF student distilled from the shipped teacher) on this CPU for MINUTES, in the background of other work, and
# ship it when it is better on the held-out clips (design.md section 9).
#
#   bash recipes/ljspeech/cpu_continue.sh 120                       # train 120 CPU-minutes, then judge
#   bash recipes/ljspeech/cpu_continue.sh 0 --judge                 # judge the run's last.pt now
#   bash recipes/ljspeech/cpu_continue.sh 120 --install             # ... and replace the shipped file if better
#   bash recipes/ljspeech/cpu_continue.sh 120 --model wavenet       # the teacher, grown the harmonic source
#   bash recipes/ljspeech/cpu_continue.sh 120 --model student       # the student, re-distilled from the teacher
#
# Stages:
#   1 train  python -m wavflow.train recipes/ljspeech/conf/MODEL.cpu.yaml (the architecture comes from the
#            starting checkpoint; the teacher's and student's configs add the source, which grows them; the
#            student distils from --teacher) at nice 19, for MINUTES of the process's CPU time (--clock), bf16
#            autocast where the CPU has native bf16: resumed from OUT/last.pt when it exists (the run goes on exactly
#            where it stopped, with its own settings), else started from the shipped checkpoint with --init (a fresh
#            optimizer: the WaveGlow at Adam 5e-5, the others at their config's rate, after a 300-step warm-up)
#   2 judge  OUT/last.pt as the file that would ship (OUT/judged.pt: fp16 weights, --sigma or --temperature as
#            its default),
#            then python -m wavflow.evaluate on the 20 validation clips, whole, the shipped file and that one with
#            the same noise seeds: DNSMOS P.808, pitch errors, MR-STFT, log-mel L1, held-out NLL, Griffin-Lim, and the
#            HTML report OUT/judge-report/index.html
#   3 ship   OUT/candidate.pt (the judged file) when it beats the shipped model (cpu_experiment.py beats): DNSMOS
#            P.808 better by more than two standard errors of the per-clip paired difference, AND gross pitch error
#            lower (no voiced frame counts as 100%) or, once the shipped file meets the 10% target, still within it;
#            with --install it replaces the shipped file. OUT/history.jsonl gets one line per judgement: CPU
#            minutes, steps, samples seen, every figure, the paired DNSMOS change and its standard error.
# Options: --model waveglow|wavenet|student (default waveglow), --out DIR (default exp/cpu_continue, the others'
#          exp/cpu_continue_wavenet and exp/cpu_continue_student), --data-root DIR (default
#          ../shared/data/LJSpeech-1.1-mini), --teacher FILE (the student's teacher, default the shipped
#          checkpoints/wavenet-ljspeech-mini.pt; a resumed run keeps its own and refuses another file),
#          --threads N|auto (torch threads; default auto: one, plus the cores other processes leave idle, back to
#          one the moment they are wanted: wavflow/train/threads.py), --judge (skip training), --install,
#          --train-args "K=V ...",
#          --shipped FILE (the model to beat and to start from; default checkpoints/MODEL-ljspeech-mini.pt),
#          --metrics M (evaluate's optional metrics, default dnsmos,pitch; DNSMOS needs wavflow[metrics]: without
#          it no model counts as better), --judge-args "..." (more evaluate options, e.g. --max-clips 4; the
#          teacher's default, as its generation is sequential),
#          --sigma S (the continued WaveGlow's default sampling sigma, chosen on training clips, never on these),
#          --temperature T (the same for the continued teacher's or student's sampling temperature),
#          --clock cpu|wall (what MINUTES counts, default cpu: the process's CPU time, which on two threads runs up
#          to twice as fast as the wall clock; wall: to end by a given time)
set -euo pipefail

MINUTES=${1:?usage: cpu_continue.sh MINUTES [--out DIR] [--data-root DIR] [--threads N] [--judge] [--install]}
shift
OUT=""
MODEL=waveglow
DATA=../shared/data/LJSpeech-1.1-mini
THREADS=auto
JUDGE_ONLY=0
INSTALL=0
TRAIN_ARGS=""
SHIPPED=""
TEACHER=""
METRICS=dnsmos,pitch
JUDGE_ARGS="-"
SIGMA=""
TEMPERATURE=""
CLOCK=cpu
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --data-root) DATA=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --judge) JUDGE_ONLY=1; shift ;;
    --install) INSTALL=1; shift ;;
    --train-args) TRAIN_ARGS=$2; shift 2 ;;
    --shipped) SHIPPED=$2; shift 2 ;;
    --teacher) TEACHER=$2; shift 2 ;;
    --metrics) METRICS=$2; shift 2 ;;
    --judge-args) JUDGE_ARGS=$2; shift 2 ;;
    --sigma) SIGMA=$2; shift 2 ;;
    --temperature) TEMPERATURE=$2; shift 2 ;;
    --clock) CLOCK=$2; shift 2 ;;
    *) echo "cpu_continue.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case $CLOCK in cpu) what=CPU-minutes ;; wall) what=minutes ;;
  *) echo "cpu_continue.sh: --clock is cpu or wall, not $CLOCK" >&2; exit 2 ;; esac
case $MODEL in
  waveglow) OUT=${OUT:-exp/cpu_continue}; [ "$JUDGE_ARGS" = - ] && JUDGE_ARGS=""
    if [ -n "$TEMPERATURE" ]; then echo "cpu_continue.sh: --temperature is the teacher's and the student's; the WaveGlow has --sigma" >&2
      exit 2; fi ;;
  wavenet|student)
    if [ "$MODEL" = wavenet ]; then OUT=${OUT:-exp/cpu_continue_wavenet}; [ "$JUDGE_ARGS" = - ] && JUDGE_ARGS="--max-clips 4"
    else OUT=${OUT:-exp/cpu_continue_student}; [ "$JUDGE_ARGS" = - ] && JUDGE_ARGS=""; fi  # parallel: all 20 clips
    if [ -n "$SIGMA" ]; then echo "cpu_continue.sh: --sigma is the WaveGlow's; the $MODEL has --temperature" >&2
      exit 2; fi ;;
  *) echo "cpu_continue.sh: --model is waveglow, wavenet or student, not $MODEL" >&2; exit 2 ;;
esac
if [ -n "$TEACHER" ] && [ "$MODEL" != student ]; then
  echo "cpu_continue.sh: --teacher is the student's; the $MODEL has none" >&2; exit 2; fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHIPPED=${SHIPPED:-$REPO/checkpoints/$MODEL-ljspeech-mini.pt}
if [ ! -f "$SHIPPED" ]; then echo "cpu_continue.sh: no checkpoint at $SHIPPED" >&2; exit 2; fi
teacher=()
if [ "$MODEL" = student ]; then
  TEACHER=${TEACHER:-$REPO/checkpoints/wavenet-ljspeech-mini.pt}
  if [ ! -f "$TEACHER" ]; then echo "cpu_continue.sh: no teacher checkpoint at $TEACHER" >&2; exit 2; fi
  teacher=(teacher="$(cd "$(dirname "$TEACHER")" && pwd)/$(basename "$TEACHER")")
fi
PY=${PYTHON:-python}
mkdir -p "$OUT"

if [ "$JUDGE_ONLY" = 0 ]; then
  if [ -f "$OUT/last.pt" ]; then
    conf=$OUT/config.yaml; start=(--resume)  # the run's own settings, written when it started
  else
    # The WaveGlow: the run's settings without model_config (the experiment's architecture and switches; the
    # shipped file's are kept). A trained model goes on at Adam 5e-5 after a 300-step warm-up of the fresh
    # optimizer (docs/quality.md: 5e-5 beat 2e-4 on the trainer's validation NLL and on voicing after 600 steps
    # from the same state). The teacher and the student: their config's model_config holds only the source,
    # which grows them; the student distils from the teacher named on the command line.
    conf=$OUT/continue.yaml; start=(--init "$SHIPPED")
    "$PY" -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); c["mel"] = {}
if sys.argv[3] == "waveglow":
    c.pop("model_config"); c["train"]["lr"] = 5e-5
c["train"]["warmup_steps"] = 300
yaml.safe_dump(c, open(sys.argv[2], "w"), sort_keys=False)' "$HERE/conf/$MODEL.cpu.yaml" "$conf" "$MODEL"
  fi
  if [ "$THREADS" = auto ]; then threads=(train.threads=0 train.adaptive_threads=true)
  else threads=(train.threads="$THREADS" train.adaptive_threads=false); fi
  echo "stage 1: train ${MINUTES} ${what} (${start[*]})"
  # shellcheck disable=SC2086
  nice -n 19 "$PY" -m wavflow.train "$conf" data.root="$DATA" train.precision=auto \
    "${threads[@]}" ${teacher[@]+"${teacher[@]}"} train.budget_clock="$CLOCK" train.ckpt_every=100 $TRAIN_ARGS --out-dir "$OUT" "${start[@]}" \
    --max-minutes "$MINUTES" >>"$OUT/train.log" 2>&1
fi
echo "stage 2: judge $OUT/last.pt against $SHIPPED"
"$PY" -m wavflow.convert "$OUT/last.pt" "$OUT/judged.pt" --dtype fp16 ${SIGMA:+--sigma "$SIGMA"} \
  ${TEMPERATURE:+--temperature "$TEMPERATURE"} >"$OUT/judge.log" 2>&1
# shellcheck disable=SC2086
nice -n 19 "$PY" -m wavflow.evaluate "$SHIPPED" "$OUT/judged.pt" --names shipped,continued --data-root "$DATA" \
  --metrics "$METRICS" --json "$OUT/judge.json" --plot "$OUT/judge.png" --report "$OUT/judge-report" $JUDGE_ARGS \
  >>"$OUT/judge.log" 2>&1
echo "stage 3: decide"
"$PY" "$HERE/cpu_experiment.py" decide "$OUT" "$OUT/judge.json" "$SHIPPED" "$INSTALL"
