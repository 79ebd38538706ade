#!/usr/bin/env bash
# LJSpeech recipe: download, prepare, train the WaveNet teacher and WaveGlow, distil the IAF student from the
# teacher, vocode the validation clips with each, evaluate against Griffin-Lim, benchmark.
#
#   bash recipes/ljspeech/run.sh                                          # everything, paper-size configs
#   bash recipes/ljspeech/run.sh --data-root /data/LJSpeech-1.1 --conf-suffix tiny   # CPU-sized
#   bash recipes/ljspeech/run.sh --stage 3 --stop-stage 3 --n-gpus 8      # WaveGlow only, on 8 GPUs
#   bash recipes/ljspeech/run.sh --mel-preset espnet --train-args "mel.sample_rate=24000 mel.hop_length=300 \
#       mel.n_fft=2048 mel.win_length=1200"                              # ESPnet's features at 24 kHz
#
# Stages (each logs to EXP/logs/stageN.NAME.log; each is skipped when its output is complete and was made from
# the same inputs and options, unless --force):
#   0 download   LJSpeech-1.1.tar.bz2 (2.6 GB) with curl -C - (resumable), sha256-checked, unpacked;
#                skipped when --data-root already holds metadata.csv
#   1 prepare    check the clips against SHA256SUMS when the root has one; write the split lists
#                (EXP/data/{train,valid}.list: validation = the last --n-valid lines of metadata.csv, as
#                wavflow.data splits) and the validation mels (EXP/data/valid_mel/ID.npy)
#   2 teacher    python -m wavflow.train conf/wavenet.yaml  -> EXP/wavenet/
#   3 waveglow   python -m wavflow.train conf/waveglow.yaml -> EXP/waveglow/
#   4 student    python -m wavflow.train conf/student.yaml teacher=<stage 2 checkpoint> -> EXP/student/
#   5 vocode     python -m wavflow.synthesize on the validation clips' mels, each model's in its own checkpoint's
#                convention (EXP/vocoded/mels/MODEL/) -> EXP/vocoded/MODEL/ID.wav
#   6 evaluate   python -m wavflow.evaluate on the three checkpoints -> EXP/eval/{results.md,results.json,spectrograms.png}
#                and the HTML report EXP/eval/report/index.html (metrics, settings, each clip's audio and spectrogram
#                by every system; opens from the file system)
#   7 benchmark  python -m wavflow.benchmark with the three checkpoints -> EXP/bench/{bench.md,bench.json,bench.png}
# A model's checkpoint for stages 4-7 is best.pt (lowest validation NLL) when training wrote one, else last.pt.
# An interrupted training stage resumes from its last.pt when run again, and so does one given a larger --steps;
# a retrained model redoes the stages that use it (a retrained teacher restarts the distillation).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash recipes/ljspeech/run.sh [options]
  --stage N            first stage to run (default 0)
  --stop-stage M       last stage to run (default 7)
  --data-root DIR      LJSpeech root (metadata.csv + wavs/); default: DOWNLOAD_DIR/LJSpeech-1.1 (stage 0 fills it)
  --download-dir DIR   where stage 0 downloads and unpacks (default: downloads)
  --conf-suffix S      use conf/MODEL.S.yaml (e.g. tiny: CPU-sized models)
  --conf-dir DIR       where the MODEL.yaml files are (default: recipes/ljspeech/conf)
  --exp-dir DIR        outputs (default: exp/ljspeech, or exp/ljspeech_S with a suffix)
  --n-gpus N           training processes; N > 1 launches torchrun --nproc_per_node N (default 1)
  --steps N            override train.max_steps of every model (smoke runs)
  --device D           auto (default), cpu, cuda, cuda:N: training, vocoding, evaluation and benchmark
  --n-valid N          validation clips held out of training (default 20; data.n_valid of every model)
  --max-clips N        vocode/evaluate only the first N validation clips (default: all)
  --max-seconds S      vocode/evaluate only the first S seconds of each clip (default: whole clips)
  --nll-max-seconds S  the student's likelihood on the first S seconds of each clip (evaluate's default: 1; 0: whole)
  --metrics LIST       evaluate's optional metrics: pesq,stoi,dnsmos or all (needs pip install 'wavflow[metrics]')
  --bench-args "..."   arguments for python -m wavflow.benchmark (default: none; with --conf-suffix tiny:
                       --quick without the naive WaveNet row, which takes minutes per 0.1 s on a CPU)
  --train-args "K=V .." extra overrides for every training stage (e.g. "train.valid_every=50 data.num_workers=0")
  --mel-preset NAME    train every model on a named mel convention: tacotron2 (default), hifigan, espnet,
                       parallel_wavegan; rate and hop through --train-args ("mel.sample_rate=24000
                       mel.hop_length=300 mel.n_fft=2048 mel.win_length=1200"); clips are resampled as they load
  --mel-stats FILE     train on features normalised with these statistics (ParallelWaveGAN's stats.npy / .h5)
  --force              re-run the selected stages even when their outputs exist
  -h, --help           this text
Environment: PYTHON (default python), TORCHRUN (default: $PYTHON -m torch.distributed.run).
EOF
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
conf_dir="$here/conf"
stage=0
stop_stage=7
data_root=""
download_dir="downloads"
conf_suffix=""
exp_dir=""
n_gpus=1
steps=""
device="auto"
n_valid=20
max_clips=""
max_seconds=""
nll_max_seconds=""
metrics=""
train_args=""
mel_preset=""
mel_stats=""
bench_args=""
bench_args_set=0
force=0
PYTHON="${PYTHON:-python}"
TORCHRUN="${TORCHRUN:-}"  # default: $PYTHON -m torch.distributed.run (torchrun of that interpreter)

die() { echo "run.sh: error: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_number() { [[ "$1" =~ ^[0-9]*\.?[0-9]+$ ]]; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) need_value "$@"; stage="$2"; shift 2 ;;
    --stop-stage) need_value "$@"; stop_stage="$2"; shift 2 ;;
    --data-root) need_value "$@"; data_root="$2"; shift 2 ;;
    --download-dir) need_value "$@"; download_dir="$2"; shift 2 ;;
    --conf-suffix) need_value "$@"; conf_suffix="$2"; shift 2 ;;
    --conf-dir) need_value "$@"; conf_dir="$2"; shift 2 ;;
    --exp-dir) need_value "$@"; exp_dir="$2"; shift 2 ;;
    --n-gpus) need_value "$@"; n_gpus="$2"; shift 2 ;;
    --steps) need_value "$@"; steps="$2"; shift 2 ;;
    --device) need_value "$@"; device="$2"; shift 2 ;;
    --n-valid) need_value "$@"; n_valid="$2"; shift 2 ;;
    --max-clips) need_value "$@"; max_clips="$2"; shift 2 ;;
    --max-seconds) need_value "$@"; max_seconds="$2"; shift 2 ;;
    --nll-max-seconds) need_value "$@"; nll_max_seconds="$2"; shift 2 ;;
    --metrics) need_value "$@"; metrics="$2"; shift 2 ;;
    --bench-args) [[ $# -ge 2 ]] || die "--bench-args needs a value"; bench_args="$2"; bench_args_set=1; shift 2 ;;
    --train-args) [[ $# -ge 2 ]] || die "--train-args needs a value"; train_args="$2"; shift 2 ;;
    --mel-preset) need_value "$@"; mel_preset="$2"; shift 2 ;;
    --mel-stats) need_value "$@"; mel_stats="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

is_uint "$stage" && is_uint "$stop_stage" || die "--stage and --stop-stage take stage numbers 0-7"
(( stage <= stop_stage )) || die "--stage $stage is after --stop-stage $stop_stage"
is_uint "$n_gpus" && (( n_gpus >= 1 )) || die "--n-gpus must be a positive integer, got '$n_gpus'"
is_uint "$n_valid" && (( n_valid >= 1 )) || die "--n-valid must be a positive integer, got '$n_valid'"
[[ -z "$steps" ]] || { is_uint "$steps" && (( steps >= 1 )); } || die "--steps must be a positive integer, got '$steps'"
[[ -z "$max_clips" ]] || { is_uint "$max_clips" && (( max_clips >= 1 )); } || die "--max-clips must be a positive integer"
[[ -z "$max_seconds" ]] || is_number "$max_seconds" || die "--max-seconds must be a positive number, got '$max_seconds'"
[[ -z "$nll_max_seconds" ]] || is_number "$nll_max_seconds" || die "--nll-max-seconds must be a positive number"
[[ "$conf_suffix" =~ ^[A-Za-z0-9_-]*$ ]] || die "--conf-suffix '$conf_suffix': letters, digits, - and _ only"
[[ -z "$mel_preset" || "$mel_preset" =~ ^(tacotron2|hifigan|espnet|parallel_wavegan)$ ]] \
  || die "--mel-preset '$mel_preset': one of tacotron2, hifigan, espnet, parallel_wavegan"
[[ -z "$mel_stats" || -f "$mel_stats" ]] || die "--mel-stats $mel_stats: no such file"
[[ -n "$mel_preset" ]] && train_args="mel.preset=$mel_preset $train_args"
[[ -n "$mel_stats" ]] && train_args="mel.stats=$(cd "$(dirname "$mel_stats")" && pwd)/$(basename "$mel_stats") $train_args"
command -v "$PYTHON" >/dev/null || die "no Python interpreter '$PYTHON' (set PYTHON=/path/to/python)"

suffix="${conf_suffix:+.$conf_suffix}"
exp_dir="${exp_dir:-exp/ljspeech${conf_suffix:+_$conf_suffix}}"
mkdir -p "$exp_dir/logs" || die "cannot create the experiment directory $exp_dir"
exp_dir="$(cd "$exp_dir" && pwd)"
logs="$exp_dir/logs"
if [[ -z "$data_root" ]]; then
  mkdir -p "$download_dir" || die "cannot create the download directory $download_dir"
  data_root="$(cd "$download_dir" && pwd)/LJSpeech-1.1"
else  # a local copy: used as it is, never downloaded into
  [[ -f "$data_root/metadata.csv" ]] || die "--data-root $data_root: no metadata.csv there (an LJSpeech root holds metadata.csv and wavs/; leave --data-root out to download)"
  data_root="$(cd "$data_root" && pwd)"
fi
for model in wavenet waveglow student; do
  [[ -f "$conf_dir/$model$suffix.yaml" ]] || die "no config $conf_dir/$model$suffix.yaml (check --conf-suffix)"
done

# --------------------------------------------------------------------------------------------------------------
# Stage plumbing

# run_stage N NAME CMD...: run CMD with its output in the stage's log file; on failure, show the log's tail.
run_stage() {
  local n="$1" name="$2"; shift 2
  local log="$logs/stage$n.$name.log"
  echo "stage $n ($name): running; log: $log"
  {
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
  } >"$log"
  local t0=$SECONDS status
  # In a subshell with errexit on, outside any `||`: bash ignores `set -e` inside a function called as
  # `f || ...`, which would let a failing command in the middle of a stage go unnoticed.
  set +e
  (set -e; "$@") >>"$log" 2>&1
  status=$?
  set -e
  if (( status != 0 )); then
    echo "stage $n ($name): FAILED (exit $status) after $((SECONDS - t0)) s; last lines of $log:" >&2
    tail -n 15 "$log" | sed 's/^/    /' >&2
    exit "$status"
  fi
  echo "stage $n ($name): done in $((SECONDS - t0)) s"
}

# A stage's output counts as complete when its marker DIR/.done exists and records the same key: the stage's
# inputs (files, as path, size and mtime) and options. So a retrained checkpoint or a new --max-clips re-runs
# the stages that depend on it, and --force re-runs a stage regardless. Markers are written last, so an
# interrupted stage is never taken for a finished one.
stage_done() {  # stage_done DIR KEY
  [[ $force -eq 0 && -f "$1/.done" ]] || return 1
  if [[ "$(sed -n 2p "$1/.done")" != "$2" ]]; then
    echo "note: the inputs or options of $1 changed since it was made: redoing it"
    return 1
  fi
}
mark_done() { printf '%s\n%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$2" >"$1/.done"; }
stamp() { local f; for f in "$@"; do stat -c '%n:%s:%Y' "$f"; done | tr '\n' ' '; }
skip() { echo "stage $1 ($2): skipped, $3 is complete (--force re-runs it)"; }
in_range() { (( stage <= $1 && $1 <= stop_stage )); }

checkpoint_of() {  # checkpoint_of MODEL: the checkpoint later stages use (call as VAR=$(checkpoint_of M) || exit)
  local dir="$exp_dir/$1"
  if [[ -f "$dir/best.pt" ]]; then echo "$dir/best.pt"; elif [[ -f "$dir/last.pt" ]]; then echo "$dir/last.pt"; else
    echo "run.sh: error: no checkpoint in $dir: run stage $(stage_of "$1") ($1) first" >&2
    return 2
  fi
}
stage_of() { case "$1" in wavenet) echo 2 ;; waveglow) echo 3 ;; student) echo 4 ;; esac; }
all_checkpoints() {  # sets ckpt_wavenet, ckpt_waveglow, ckpt_student, or exits naming the missing one
  ckpt_wavenet="$(checkpoint_of wavenet)" || exit 2
  ckpt_waveglow="$(checkpoint_of waveglow)" || exit 2
  ckpt_student="$(checkpoint_of student)" || exit 2
}

need_data() {
  [[ -f "$data_root/metadata.csv" ]] || die "$data_root has no metadata.csv: run stage 0, or pass --data-root"
}

# --------------------------------------------------------------------------------------------------------------
# Stage 0: download

LJ_URL="https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
LJ_SHA256="be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5"

download() {
  local dir archive
  dir="$(dirname "$data_root")"
  archive="$dir/LJSpeech-1.1.tar.bz2"
  mkdir -p "$dir"
  if ! echo "$LJ_SHA256  $archive" | sha256sum -c --status 2>/dev/null; then
    echo "downloading $LJ_URL -> $archive (resumes a partial file)"
    curl -fL --retry 5 -C - -o "$archive" "$LJ_URL"
    echo "$LJ_SHA256  $archive" | sha256sum -c - || { echo "checksum mismatch: delete $archive and retry"; return 1; }
  fi
  echo "unpacking $archive"
  tar -xjf "$archive" -C "$dir"
  [[ -f "$data_root/metadata.csv" ]] || { echo "the archive did not unpack to $data_root"; return 1; }
}

if in_range 0; then
  if [[ -f "$data_root/metadata.csv" ]]; then
    echo "stage 0 (download): skipped, $data_root holds metadata.csv"
  else
    run_stage 0 download download
  fi
fi

# --------------------------------------------------------------------------------------------------------------
# Stage 1: prepare

prepare() {
  local out="$1"
  if [[ -f "$data_root/SHA256SUMS" ]]; then
    echo "checking $data_root/SHA256SUMS"
    (cd "$data_root" && sha256sum -c --quiet SHA256SUMS)
  fi
  "$PYTHON" - "$data_root" "$n_valid" "$out" <<'PY'
import sys
from pathlib import Path
from wavflow.data import find_audio, read_metadata, split_ids

root, n_valid, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
items = read_metadata(root)
for split in ("train", "valid"):
    ids = [clip_id for clip_id, _ in split_ids(items, split, n_valid)]
    (out / f"{split}.list").write_text("".join(f"{find_audio(root, i)}\n" for i in ids))
    print(f"{split}: {len(ids)} clips -> {out / (split + '.list')}")
PY
  mkdir -p "$out/valid_mel"
  mapfile -t wavs <"$out/valid.list"
  "$PYTHON" -m wavflow.mel "${wavs[@]}" -o "$out/valid_mel" --quiet
  echo "validation mels -> $out/valid_mel ($(ls "$out/valid_mel" | wc -l) files)"
}

data_dir="$exp_dir/data"
if in_range 1; then
  key_prepare="$data_root n_valid=$n_valid $(stamp "$data_root/metadata.csv")"
  if stage_done "$data_dir" "$key_prepare"; then skip 1 prepare "$data_dir"; else
    need_data
    rm -rf "$data_dir"; mkdir -p "$data_dir"
    run_stage 1 prepare prepare "$data_dir"
    mark_done "$data_dir" "$key_prepare"
  fi
fi

# --------------------------------------------------------------------------------------------------------------
# Stages 2-4: training

train_model() {  # train_model MODEL [extra overrides...]
  local model="$1"; shift
  local out="$exp_dir/$model"
  local -a cmd overrides resume=()
  overrides=("data.root=$data_root" "data.n_valid=$n_valid" "train.device=$device")
  [[ -n "$steps" ]] && overrides+=("train.max_steps=$steps")
  # shellcheck disable=SC2206  # word-splitting of --train-args is the point
  [[ -n "$train_args" ]] && overrides+=($train_args)
  overrides+=("$@")
  [[ -f "$out/last.pt" ]] && resume=(--resume)  # an interrupted run continues where it stopped
  if (( n_gpus > 1 )); then
    if [[ -n "$TORCHRUN" ]]; then cmd=("$TORCHRUN"); else cmd=("$PYTHON" -m torch.distributed.run); fi
    cmd+=(--standalone --nproc_per_node "$n_gpus" -m wavflow.train)
  else
    cmd=("$PYTHON" -m wavflow.train)
  fi
  "${cmd[@]}" "$conf_dir/$model$suffix.yaml" --out-dir "$out" "${resume[@]}" "${overrides[@]}"
}

train_stage() {  # train_stage N MODEL [extra overrides...]
  local n="$1" model="$2"; shift 2
  local out="$exp_dir/$model"
  in_range "$n" || return 0
  # Changed steps or overrides continue the run from its last.pt (a larger --steps trains on); the trainer
  # refuses a last.pt of another model config or teacher, and --force starts afresh.
  local key
  key="$(stamp "$conf_dir/$model$suffix.yaml") root=$data_root n_valid=$n_valid steps=$steps device=$device n_gpus=$n_gpus train_args=$train_args $* ${key_extra:-}"
  if stage_done "$out" "$key"; then skip "$n" "$model" "$out"; return 0; fi
  need_data
  if (( force )); then rm -rf "$out"; fi
  # A run distilled from another teacher cannot continue: start it afresh.
  if [[ -f "$out/.inputs" && "$(cat "$out/.inputs")" != "${key_extra:-}" ]]; then
    echo "note: $out was trained from other inputs (a retrained teacher): starting it afresh"
    rm -rf "$out"
  fi
  mkdir -p "$out"
  printf '%s\n' "${key_extra:-}" >"$out/.inputs"
  run_stage "$n" "$model" train_model "$model" "$@"
  mark_done "$out" "$key"
}

train_stage 2 wavenet
train_stage 3 waveglow
if in_range 4; then
  teacher="$(checkpoint_of wavenet)" || exit 2
  key_extra="$(stamp "$teacher")"  # a retrained teacher restarts the distillation
  train_stage 4 student "teacher=$teacher"
fi

# --------------------------------------------------------------------------------------------------------------
# Stage 5: vocode the validation mels with each model

vocode() {
  local out="$1" model ckpt mels
  for model in wavenet waveglow student; do
    ckpt="$(checkpoint_of "$model")"
    mels="$out/mels/$model"
    mkdir -p "$mels"
    echo "== $model: $ckpt"
    # The inputs: the validation clips' mels in this checkpoint's own convention (stage 1's are Tacotron 2's),
    # the first --max-clips of them, each cut to --max-seconds.
    "$PYTHON" - "$data_dir/valid.list" "$ckpt" "$mels" "${max_clips:-0}" "${max_seconds:-0}" <<'PY'
import sys
from pathlib import Path
from wavflow.checkpoint import load
from wavflow.melinput import save_mel
from wavflow.mel import audio_to_mel

listing, ckpt, dst = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
max_clips, max_seconds = int(sys.argv[4]), float(sys.argv[5])
c = load(ckpt).mel_config
files = [Path(line) for line in listing.read_text().split()][: max_clips or None]
frames = int(max_seconds * c.sample_rate) // c.hop_length + 1 if max_seconds else None
for f in files:
    save_mel(dst / f"{f.stem}.npy", audio_to_mel(f, c)[:, :frames])
print(f"{len(files)} mels ({c.sample_rate} Hz, hop {c.hop_length}) -> {dst}"
      + (f" (first {frames} frames each)" if frames else ""))
PY
    "$PYTHON" -m wavflow.synthesize "$mels" --checkpoint "$ckpt" -o "$out/$model" --device "$device" --quiet
    echo "$(ls "$out/$model" | wc -l) files -> $out/$model"
  done
}

vocoded_dir="$exp_dir/vocoded"
if in_range 5; then
  [[ -f "$data_dir/.done" ]] || die "no validation mels in $data_dir: run stage 1 first"
  all_checkpoints
  key="$(stamp "$data_dir/.done" "$ckpt_wavenet" "$ckpt_waveglow" "$ckpt_student") clips=$max_clips seconds=$max_seconds device=$device"
  if stage_done "$vocoded_dir" "$key"; then skip 5 vocode "$vocoded_dir"; else
    rm -rf "$vocoded_dir"; mkdir -p "$vocoded_dir"
    run_stage 5 vocode vocode "$vocoded_dir"
    mark_done "$vocoded_dir" "$key"
  fi
fi

# --------------------------------------------------------------------------------------------------------------
# Stage 6: evaluate

evaluate() {
  local out="$1"
  local -a args=(--data-root "$data_root" --n-valid "$n_valid" --device "$device"
                 --json "$out/results.json" --plot "$out/spectrograms.png" --report "$out/report")
  [[ -n "$max_clips" ]] && args+=(--max-clips "$max_clips")
  [[ -n "$max_seconds" ]] && args+=(--max-seconds "$max_seconds")
  [[ -n "$nll_max_seconds" ]] && args+=(--nll-max-seconds "$nll_max_seconds")
  [[ -n "$metrics" ]] && args+=(--metrics "$metrics")
  "$PYTHON" -m wavflow.evaluate "$ckpt_wavenet" "$ckpt_waveglow" "$ckpt_student" --names wavenet,waveglow,student \
    "${args[@]}" >"$out/results.md"
  cat "$out/results.md"
}

eval_dir="$exp_dir/eval"
if in_range 6; then
  all_checkpoints
  key="$(stamp "$ckpt_wavenet" "$ckpt_waveglow" "$ckpt_student") root=$data_root n_valid=$n_valid clips=$max_clips seconds=$max_seconds nll_seconds=$nll_max_seconds metrics=$metrics device=$device report=1"
  if stage_done "$eval_dir" "$key"; then skip 6 evaluate "$eval_dir"; else
    need_data
    rm -rf "$eval_dir"; mkdir -p "$eval_dir"
    run_stage 6 evaluate evaluate "$eval_dir"
    mark_done "$eval_dir" "$key"
    cat "$eval_dir/results.md"
  fi
fi

# --------------------------------------------------------------------------------------------------------------
# Stage 7: benchmark

benchmark() {
  local out="$1"
  local bench_device="$device"
  [[ "$bench_device" == auto ]] && bench_device="$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
  local -a args=(--wavenet "$ckpt_wavenet" --waveglow "$ckpt_waveglow" --student "$ckpt_student" --device "$bench_device"
                 --json "$out/bench.json" --plot "$out/bench.png")
  # CPU-sized models get the benchmark's short lengths; real ones its default sweep.
  if (( bench_args_set )); then
    # shellcheck disable=SC2206  # word-splitting of --bench-args is the point
    args+=($bench_args)
  elif [[ "$conf_suffix" == tiny ]]; then
    args+=(--quick --models wavenet_cached,wavenet_batched,waveglow,student)
  fi
  "$PYTHON" -m wavflow.benchmark "${args[@]}" >"$out/bench.md"
  cat "$out/bench.md"
}

bench_dir="$exp_dir/bench"
if in_range 7; then
  all_checkpoints
  key="$(stamp "$ckpt_wavenet" "$ckpt_waveglow" "$ckpt_student") device=$device bench_args=$bench_args"
  if stage_done "$bench_dir" "$key"; then skip 7 benchmark "$bench_dir"; else
    rm -rf "$bench_dir"; mkdir -p "$bench_dir"
    run_stage 7 benchmark benchmark "$bench_dir"
    mark_done "$bench_dir" "$key"
    cat "$bench_dir/bench.md"
  fi
fi

echo "run.sh: stages $stage-$stop_stage finished; outputs in $exp_dir"
