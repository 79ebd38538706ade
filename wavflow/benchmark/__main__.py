"""`python -m wavflow.benchmark`: bad input is one line and exit status 2 (wavflow.cli.run_cli)."""
from ..cli import run_cli
from . import PROG, main

run_cli(PROG, main)
