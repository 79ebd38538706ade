"""`python -m wavflow.benchmark`: the `wavflow benchmark` command (wavflow.commands.benchmark)."""
from ..commands.benchmark import main

main(prog="python -m wavflow.benchmark")  # help and errors name the command as it was typed
