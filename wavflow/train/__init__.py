"""Training for every wavflow model: `wavflow train CONFIG.yaml [--out-dir DIR] [--resume | --init CKPT]
[--max-minutes M] [key=value ...]` (also `python -m wavflow.train`; the command line is wavflow.commands.train).

A run is described by a YAML file (sections model, model_config, mel, teacher, data, train: config.py;
recipes/ljspeech/conf/*.yaml are commented examples). Any key can be overridden on the command line:
`train.max_steps=100 data.root=/data/LJSpeech-1.1`.

    config.py      the YAML sections (DataConfig, TrainConfig, RunConfig), overrides, value checks
    runtime.py     the process: its rank under torchrun, its device, its random streams, the stop signals, exit
                   statuses
    state.py       what the checkpoints hold, last.pt (resume), step-N.pt, best.pt, and their writer
    loop.py        the Trainer: build the run, then fit(): the loop of steps, logs, validations and saves
    feed.py        the training data: splits, the sampler's epochs, batches loaded or cut on the device
    step.py        one optimizer step: autocast, DDP, the processes' agreement, lr schedule, clipping
    validation.py  the held-out clips, their pooled NLL, TensorBoard's audio samples
    teacher.py     the teacher a distilled model (needs_teacher) learns from: loaded, hashed, frozen, attached
    budget.py      the --max-minutes budget on the wall or CPU clock (train.budget_clock), measured durations
    runlog.py      log.jsonl, TensorBoard, progress on stderr; rates (samples/s) and the run's summary
    command.py     train() for Python, and the process start time --max-minutes counts from
    ship.py        deprecated `python -m wavflow.train.ship`: now `wavflow convert --dtype fp16` (wavflow.convert)

--init CKPT starts a new run (fresh optimizer, step 0) from a checkpoint's weights and architecture; --max-minutes
M ends the run with a validation and saves before M minutes from process start (budget.py, state.read_init).

Distributed: launch the same command under torchrun (`torchrun --nproc_per_node 8 -m wavflow.train CONF`);
each process trains on its own share of every epoch with `data.batch_size` crops, so the global batch is
batch_size x world size. GPUs talk over NCCL, CPU processes over gloo. Rank 0 alone writes files, and every
rank reads last.pt on --resume, so on several nodes the output directory must be on a shared file system.

The output directory holds:
    last.pt      full training state (model, optimizer, grad scaler, step, RNG states of every process, the
                 data sampler's position, config, mel settings), written atomically every train.ckpt_every
                 steps; `--resume` continues from it bit-for-bit: the same losses as an uninterrupted run on
                 the same hardware (on GPU with train.deterministic: true; without it, cuDNN's kernel choice
                 makes even two uninterrupted GPU runs differ in the last bits). It loads with wavflow.load.
                 `--resume` with no last.pt starts afresh, so a scheduler can rerun one command line.
    best.pt      inference checkpoint (no optimizer) with the lowest validation NLL so far.
    config.yaml  the resolved configuration;  log.jsonl  one JSON line per log/validation event;
    tb/          TensorBoard scalars (loss, validation NLL, lr, gradient norm, steps/s) and audio samples.

Exit status: 0 finished (train.max_steps, or the --max-minutes budget); 2 bad configuration or data (one line
on stderr); 1 the loss or gradient became NaN/inf (nothing is saved at that point: last.pt stays the last good
state); 130 after SIGINT and 143 after SIGTERM: the step in progress is finished and a checkpoint saved before
exiting, so `--resume` loses nothing.
A second SIGINT aborts at once (last.pt is still the previous complete checkpoint: saves are atomic).
"""
from ..models import weights_sha256
from .command import train
from .config import DataConfig, RunConfig, TrainConfig, load_config
from .loop import Trainer, TrainingDiverged
from .runtime import PROG, Runtime, seed_everything

__all__ = ["PROG", "DataConfig", "RunConfig", "Runtime", "TrainConfig", "Trainer", "TrainingDiverged",
           "load_config", "seed_everything", "train", "weights_sha256"]
