"""`python -m wavflow.train` and `torchrun -m wavflow.train`: the `wavflow train` command (wavflow.commands.train),
under the trainer's own name."""
from ..commands.train import main

main()
