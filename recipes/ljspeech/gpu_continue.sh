#!/usr/bin/env bash
# One GPU run of at most MINUTES that continues the shipped checkpoints and keeps only what improved (issue 14).
#
#   bash recipes/ljspeech/gpu_continue.sh 9                 # on the GPU machine: outputs into $OUT
#   bash recipes/ljspeech/gpu_continue.sh 9 --dry-run       # the plan: stages, budget shares, commands
#   bash recipes/ljspeech/gpu_continue.sh 1 --smoke --data-root tests/data/ljspeech --out /tmp/gc   # CPU smoke
#
# Stages, each bounded by what is left of MINUTES (counted from the script's start, set-up included):
#   0 set-up     install the carried wheels when soundfile/librosa are missing; complete the packed data root
#                (clips listed in DATA_ROOT/reuse.txt are copied from the repository's tests/data/ljspeech)
#   1 waveglow   python -m wavflow.train checkpoints/configs/waveglow.yaml (model_config/mel dropped: they come
#                from the checkpoint) --init checkpoints/waveglow-ljspeech-mini.pt --max-minutes SHARE with
#                data.device_resident, bf16 autocast, fused Adam; the run's last.pt as fp16 weights (the file
#                that would ship: a source model's validation NLL scores its predicted pitch, not its sound);
#                then python -m wavflow.evaluate shipped continued (held-out NLL, given the recordings' pitch too,
#                pitch errors, log-mel L1, MR-STFT, Griffin-Lim row)
#   2 wavenet    the same for the teacher (evaluated on the first 4 clips x 1 s: its generation is sequential)
#   3 student    the same, re-distilled from the teacher that ships after stage 2 (`--init student teacher=...`),
#                grown the teacher's source when the teacher has one
#   4 throughput the paper-size WaveGlow (recipes/ljspeech/conf/waveglow.yaml, 87.9M, NVIDIA's released layout)
#                in bf16 with device-resident data for --throughput-seconds, when that much is left
# A model is shipped only when its continued checkpoint beats the shipped one on BOTH held-out NLL (given the
# recordings' pitch, for a model with a source) and log-mel L1, with a gross pitch error no higher (same clips,
# same noise seeds, same device). The device has no DNSMOS: judge a returned file on the CPU as well
# (cpu_continue.sh 0 --judge --shipped ...) before it replaces a shipped one. Time a stage does not use flows to
# the later ones.
#
# Output folder (OUT: --out, else $OUT, else exp/gpu_continue), within what a GPU call brings back (at most 8
# files of at most 16 MiB, 64 MiB in all):
#   MODEL-ljspeech-mini.pt   the continued model, fp16 weights (upcast to float32 on load), ONLY when it improved
#   results.jsonl            one JSON line per run: steps, wall seconds, samples seen, samples/s, old and new
#                            held-out figures, Griffin-Lim, the decision; the throughput line
#   results.md               the same as a table
#   runs.tar.gz              every stage's config.yaml, log.jsonl, evaluation JSON and console log
# Install what improved with `cp OUT/*-ljspeech-mini.pt checkpoints/` (or run with --install), then add the rows
# of results.md to checkpoints/README.md's history table.
#
# What must travel to the GPU machine (its image has torch 2.11, torchaudio, numba, PyYAML, tqdm, tensorboard,
# matplotlib, scipy, scikit-learn, but neither soundfile nor librosa; nothing can be downloaded there):
#   1. wheels in .whl/ (ignored by .gitignore), fetched here for CPython 3.12 x86-64 (2.3 MB):
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#          --platform manylinux2014_x86_64 -d .whl soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 librosa==0.11.0 \
#          audioread==3.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.8 soxr==1.1.0
#   2. the data, packed into the 64 MiB a call may send (the tree is ~55 MB of it, the fp32 checkpoints ~48 MB):
#        python recipes/ljspeech/pack_gpu_data.py ../shared/data/LJSpeech-1.1-mini     # -> .gpudata/LJSpeech-1.1-mini
#      every validation clip and as many training clips as fit, as FLAC (it prints what it packed).
#   The call: run(command="bash recipes/ljspeech/gpu_continue.sh 9", carry=[".whl", ".gpudata"], timeout_s=600).
#
# Options:
#   --data-root DIR     LJSpeech-layout root (default .gpudata/LJSpeech-1.1-mini)
#   --out DIR           output folder (default $OUT, else exp/gpu_continue)
#   --checkpoints-dir D the shipped checkpoints and configs/ (default checkpoints)
#   --models LIST       stages to run, in order (default waveglow,wavenet,student)
#   --shares LIST       training-time shares of those models (default 0.5 for waveglow, 0.25 for the others)
#   --eval-reserve LIST seconds set aside for each model's evaluation (default waveglow=60,wavenet=45,student=45)
#   --throughput-seconds S  the paper-size WaveGlow's throughput slice (default 60; 0: none)
#   --device D          cuda (default) or cpu
#   --compile           train.compile=true (compilation time comes out of the budget)
#   --wg-args/--wn-args/--st-args "K=V ..."  extra training overrides per model
#   --eval-args "..."   extra arguments for every python -m wavflow.evaluate
#   --install           also copy what improved over the checkpoints in --checkpoints-dir
#   --smoke             CPU-sized: device cpu, 2 x 4096 crops, evaluation on 2 clips x 0.5 s, small reserves,
#                       the tiny WaveGlow config for the throughput slice (tests/test_gpu_continue.py)
#   --dry-run           print the plan and stop
# Environment: PYTHON (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
die() { echo "gpu_continue.sh: error: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
is_number() { [[ "$1" =~ ^[0-9]*\.?[0-9]+$ ]]; }
abspath() { [[ "$1" == /* ]] && echo "$1" || echo "$PWD/$1"; }  # paths given are the caller's; the script cd's to the repo

minutes=""
data_root=".gpudata/LJSpeech-1.1-mini"
out="${OUT:+$(abspath "$OUT")}"
ckpt_dir="checkpoints"
models="waveglow,wavenet,student"
shares=""
eval_reserve=""
throughput_seconds=""
device="cuda"
compile=0
wg_args="" wn_args="" st_args="" eval_args=""
install=0 smoke=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-root) need_value "$@"; data_root="$(abspath "$2")"; shift 2 ;;
    --out) need_value "$@"; out="$(abspath "$2")"; shift 2 ;;
    --checkpoints-dir) need_value "$@"; ckpt_dir="$(abspath "$2")"; shift 2 ;;
    --models) need_value "$@"; models="$2"; shift 2 ;;
    --shares) need_value "$@"; shares="$2"; shift 2 ;;
    --eval-reserve) need_value "$@"; eval_reserve="$2"; shift 2 ;;
    --throughput-seconds) need_value "$@"; throughput_seconds="$2"; shift 2 ;;
    --device) need_value "$@"; device="$2"; shift 2 ;;
    --compile) compile=1; shift ;;
    --wg-args) [[ $# -ge 2 ]] || die "--wg-args needs a value"; wg_args="$2"; shift 2 ;;
    --wn-args) [[ $# -ge 2 ]] || die "--wn-args needs a value"; wn_args="$2"; shift 2 ;;
    --st-args) [[ $# -ge 2 ]] || die "--st-args needs a value"; st_args="$2"; shift 2 ;;
    --eval-args) [[ $# -ge 2 ]] || die "--eval-args needs a value"; eval_args="$2"; shift 2 ;;
    --install) install=1; shift ;;
    --smoke) smoke=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) [[ -z "$minutes" ]] || die "one MINUTES argument, got '$minutes' and '$1'"; minutes="$1"; shift ;;
  esac
done
[[ -n "$minutes" ]] || die "usage: gpu_continue.sh MINUTES [options] (see --help)"
is_number "$minutes" || die "MINUTES must be a positive number, got '$minutes'"
awk -v m="$minutes" 'BEGIN { exit !(m > 0 && m <= 10) }' || die "MINUTES must be in (0, 10] (a GPU call runs at most 10 minutes), got $minutes"
[[ -n "$throughput_seconds" ]] && { is_number "$throughput_seconds" || die "--throughput-seconds must be a number"; }
IFS=, read -r -a model_list <<<"$models"
for m in "${model_list[@]}"; do
  case "$m" in waveglow|wavenet|student) ;; *) die "--models: unknown model '$m' (waveglow, wavenet, student)" ;; esac
done

# Settings: GPU-sized by default, CPU-sized with --smoke.
if (( smoke )); then
  device="cpu"
  eval_reserve="${eval_reserve:-waveglow=8,wavenet=8,student=8}"
  throughput_seconds="${throughput_seconds:-6}"
  setup_reserve=2 closing=2 min_seconds=3
  common=(data.batch_size=2 data.segment_length=4096 data.n_valid=20 train.valid_clips=2 train.valid_max_seconds=0.5
          train.log_every=1 train.valid_every=1000 train.ckpt_every=1000 train.threads=1 train.precision=fp32
          train.warmup_steps=5)
  eval_common=(--n-valid 20 --max-clips 2 --max-seconds 0.5 --nll-max-seconds 0.05)
  eval_sequential=()
  gl_iters=2
  throughput_conf="recipes/ljspeech/conf/waveglow.tiny.yaml"
  throughput_args=(data.batch_size=2 data.segment_length=4096 data.n_valid=20 train.threads=1 train.precision=fp32)
else
  eval_reserve="${eval_reserve:-waveglow=60,wavenet=45,student=45}"
  throughput_seconds="${throughput_seconds:-60}"
  setup_reserve=15 closing=10 min_seconds=30
  common=(data.n_valid=20 train.valid_every=500 train.ckpt_every=2000 train.precision=bf16 train.warmup_steps=200)
  eval_common=(--n-valid 20)
  eval_sequential=(--max-clips 4 --max-seconds 1)  # the teacher's generation runs one sample at a time
  gl_iters=60
  throughput_conf="recipes/ljspeech/conf/waveglow.yaml"
  throughput_args=(data.n_valid=20 train.precision=bf16)
fi
if [[ -z "$shares" ]]; then  # WaveGlow, the default model, gets twice the teacher's or the student's time
  shares=$(for m in "${model_list[@]}"; do [[ "$m" == waveglow ]] && echo 0.5 || echo 0.25; done | paste -sd, -)
fi
IFS=, read -r -a share_list <<<"$shares"
(( ${#share_list[@]} == ${#model_list[@]} )) || die "--shares: give one share per model (${#model_list[@]}), got '$shares'"
# GPU defaults per model: batches several times the shipped runs' (small models leave a GPU mostly idle); the
# learning rates are the shipped runs', reached after a 200-step warm-up (a fresh Adam on trained weights moves
# every weight by about lr per step at first). Neither is tuned yet: override with --wg-args etc.
declare -A model_args=(
  [waveglow]="$( (( smoke )) || echo "data.batch_size=64") $wg_args"
  [wavenet]="$( (( smoke )) || echo "data.batch_size=32") $wn_args"
  [student]="$( (( smoke )) && echo "train.valid_max_seconds=0.1" || echo "data.batch_size=16 train.valid_clips=4 train.valid_max_seconds=0.5 train.valid_every=1000000") $st_args"
)
total=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
cd "$repo"
out="${out:-exp/gpu_continue}"
helper() { "$PYTHON" "$here/gpu_continue.py" "$@"; }
elapsed() { echo "$SECONDS"; }

if (( dry_run )); then
  echo "gpu_continue: $minutes min ($total s) on $device; data $data_root; checkpoints $ckpt_dir; out $out"
  echo "  stages: $models with training shares $shares; evaluation reserves $eval_reserve; throughput ${throughput_seconds} s"
  t=$setup_reserve
  for m in "${model_list[@]}"; do
    budget=$(helper budget --total "$total" --elapsed "$t" --stage "$m" --models "$models" --shares "$shares" \
             --eval-reserve "$eval_reserve" --throughput "$throughput_seconds" --closing "$closing" --min-seconds "$min_seconds")
    echo "  $m: --max-minutes $budget  (if every earlier stage uses its whole share)"
    t=$(awk -v t="$t" -v b="$budget" -v m="$m" -v r="$eval_reserve" 'BEGIN { n = split(r, a, ","); e = 30;
        for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == m) e = kv[2] } printf "%d", t + b * 60 + e }')
  done
  echo "  throughput: $throughput_conf for ${throughput_seconds} s when that much is left (t = $t s of $total)"
  exit 0
fi

# ------------------------------------------------------------------------------------------------------------
# Stage 0: set-up (every input checked before anything is written)
[[ -f "$data_root/metadata.csv" ]] || die "--data-root $data_root: no metadata.csv (pack it: python recipes/ljspeech/pack_gpu_data.py SRC)"
for m in "${model_list[@]}"; do
  [[ -f "$ckpt_dir/$m-ljspeech-mini.pt" ]] || die "no shipped checkpoint $ckpt_dir/$m-ljspeech-mini.pt"
  [[ -f "$ckpt_dir/configs/$m.yaml" ]] || die "no training config $ckpt_dir/configs/$m.yaml"
done
mkdir -p "$out" || die "cannot create the output folder $out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_continue.XXXXXX")"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import soundfile, librosa" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || die "soundfile/librosa are missing and no wheels are in .whl/ (see the header: carry .whl)"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl
  export PYTHONPATH="$repo:$work/site${PYTHONPATH#"$repo"}"
  "$PYTHON" -c "import soundfile, librosa" || die "the carried wheels did not give soundfile and librosa"
fi
if [[ -f "$data_root/reuse.txt" ]]; then  # clips the repository already holds (pack_gpu_data.py left them out)
  src="$(head -n 1 "$data_root/reuse.txt")"
  tail -n +2 "$data_root/reuse.txt" | while read -r id; do
    [[ -z "$id" || -e "$data_root/wavs/$id.flac" || -e "$data_root/wavs/$id.wav" ]] && continue
    cp "$src/wavs/$id".* "$data_root/wavs/"
  done
fi
read -r torch_version device_name < <("$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if '$device' != 'cpu' and torch.cuda.is_available() else 'cpu')")
[[ -n "${torch_version:-}" ]] || die "$PYTHON cannot import torch"
[[ "$device" == cpu || "$device_name" != cpu ]] || die "--device $device: no CUDA device here (use --device cpu)"
run_id="gpu-$(date -u +%Y%m%dT%H%MZ)"
echo "gpu_continue: $minutes min on $device_name (torch $torch_version); data $data_root; work $work; out $out"

# run_logged NAME CMD...: CMD's output into WORK/NAME.log (and the last lines on failure); never stops the script.
run_logged() {
  local name="$1"; shift
  echo "# $*" >"$work/$name.log"
  local status=0
  "$@" >>"$work/$name.log" 2>&1 || status=$?
  (( status == 0 )) && return 0
  echo "gpu_continue: $name failed (exit $status); last lines of its log:" >&2
  tail -n 8 "$work/$name.log" | sed 's/^/    /' >&2
  return "$status"
}

teacher="$ckpt_dir/wavenet-ljspeech-mini.pt"  # what the student distils from; replaced when the teacher improves
first_eval=1
for i in "${!model_list[@]}"; do
  m="${model_list[$i]}"
  shipped="$ckpt_dir/$m-ljspeech-mini.pt"
  budget=$(helper budget --total "$total" --elapsed "$(elapsed)" --stage "$m" --models "$models" --shares "$shares" \
           --eval-reserve "$eval_reserve" --throughput "$throughput_seconds" --closing "$closing" --min-seconds "$min_seconds")
  if [[ "$budget" == 0 ]]; then
    echo "gpu_continue: $m: no time left for it"
    helper pending --model "$m" --out "$out" --run "$run_id" --reason "no time left in the $minutes-minute budget"
    continue
  fi
  dir="$work/$m"
  helper config "$ckpt_dir/configs/$m.yaml" "$work/$m.yaml"
  extra=()
  # shellcheck disable=SC2207  # one override per line
  [[ "$m" == student ]] && extra+=("teacher=$teacher" $(helper source-of "$teacher"))
  (( compile )) && extra+=(train.compile=true)
  # shellcheck disable=SC2206  # word-splitting of the per-model overrides is the point
  extra+=(${model_args[$m]})
  echo "gpu_continue: $m: training for at most $budget min from $shipped"
  if ! run_logged "train-$m" "$PYTHON" -m wavflow.train "$work/$m.yaml" --init "$shipped" --out-dir "$dir" \
        --max-minutes "$budget" "data.root=$data_root" data.device_resident=true data.num_workers=0 \
        data.cache_audio=false train.device="$device" train.fused_adam=true \
        train.max_steps=1000000000 train.tensorboard=false train.progress=true "${common[@]}" "${extra[@]}"; then
    helper pending --model "$m" --out "$out" --run "$run_id" --reason "training failed (see runs.tar.gz)"
    continue
  fi
  tail -n 2 "$work/train-$m.log"
  candidate=""
  eval_json=""
  if [[ -f "$dir/last.pt" ]] && run_logged "convert-$m" "$PYTHON" -m wavflow.convert "$dir/last.pt" \
       "$dir/$m-ljspeech-mini.pt" --dtype fp16; then
    candidate="$dir/$m-ljspeech-mini.pt"
    eval_json="$dir/eval.json"
    gl=0; (( first_eval )) && gl=$gl_iters
    sequential=()
    [[ "$m" != waveglow ]] && sequential=("${eval_sequential[@]}")
    # shellcheck disable=SC2206
    if run_logged "eval-$m" "$PYTHON" -m wavflow.evaluate "$shipped" "$candidate" --names shipped,continued \
          --data-root "$data_root" --device "$device" --json "$eval_json" --griffin-lim-iters "$gl" --metrics pitch \
          "${eval_common[@]}" "${sequential[@]}" $eval_args; then
      first_eval=0
      cat "$work/eval-$m.log" | grep '^|' || true
    else
      eval_json=""; candidate=""
    fi
  fi
  decision=$(helper record --model "$m" --train-dir "$dir" --out "$out" --run "$run_id" \
             ${eval_json:+--eval "$eval_json"} ${candidate:+--candidate "$candidate"} \
             --device-name "$device_name" --budget-minutes "$budget")
  if [[ "$decision" == replace ]]; then
    cp "$candidate" "$out/$m-ljspeech-mini.pt"
    (( install )) && cp "$candidate" "$shipped"
    [[ "$m" == wavenet ]] && teacher="$candidate"
    echo "gpu_continue: $m: improved -> $out/$m-ljspeech-mini.pt"
  else
    echo "gpu_continue: $m: kept the shipped checkpoint"
  fi
done

# Stage 4: the paper-size WaveGlow's training throughput, when the time is there.
left=$(( total - $(elapsed) - closing ))
if awk -v s="$throughput_seconds" -v l="$left" 'BEGIN { exit !(s > 0 && l >= s) }'; then
  tp_minutes=$(awk -v s="$throughput_seconds" 'BEGIN { printf "%.4f", s / 60 }')
  echo "gpu_continue: throughput of $throughput_conf for $tp_minutes min"
  if run_logged throughput "$PYTHON" -m wavflow.train "$throughput_conf" --out-dir "$work/throughput" \
        --max-minutes "$tp_minutes" "data.root=$data_root" data.device_resident=true data.num_workers=0 \
        train.device="$device" train.fused_adam=true train.max_steps=1000000000 train.valid_every=0 \
        train.ckpt_every=1000000000 train.log_every=10 train.tensorboard=false train.progress=true \
        "${throughput_args[@]}"; then
    params=$(grep -o '[0-9,]* parameters' "$work/throughput.log" | head -n 1 | tr -d ', parameters' || true)
    helper throughput --train-dir "$work/throughput" --out "$out" --run "$run_id" --config "$throughput_conf" \
      --device-name "$device_name" ${params:+--parameters "$params"}
    rm -f "$work/throughput/last.pt"  # a paper-size last.pt is 1 GB: nothing to keep
  fi
else
  echo "gpu_continue: no time left for the throughput slice"
fi

# What comes back: runs.tar.gz holds the small files of every stage (never a checkpoint).
(cd "$work" && find . -path ./site -prune -o -name '*.pt' -prune -o -type f -print | sed 's|^\./||' \
  | tar -czf "$out/.runs.tar.gz.tmp" -T - ) && mv "$out/.runs.tar.gz.tmp" "$out/runs.tar.gz"
cat "$out/results.md" 2>/dev/null || true
echo "gpu_continue: done in $(elapsed) s of $total; outputs in $out"
rm -rf "$work"
