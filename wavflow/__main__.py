"""`python -m wavflow COMMAND ...`: the `wavflow` command (wavflow.commands)."""
from .commands import main

main()
