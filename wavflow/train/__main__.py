"""`python -m wavflow.train` and `torchrun -m wavflow.train`."""
from ..cli import run_cli
from .command import main
from .runtime import PROG

run_cli(PROG, main)
