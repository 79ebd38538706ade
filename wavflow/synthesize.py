"""`python -m wavflow.synthesize ...`: the old spelling of `wavflow synthesize` (wavflow.commands.synthesize).

The vocoding itself is wavflow/inference.py, whose `synthesize()` is the Python API (`wavflow.synthesize`).
Never import this module inside the package: `import wavflow.synthesize` would make the attribute
`wavflow.synthesize` this module instead of that function.
"""

if __name__ == "__main__":
    from wavflow.commands.synthesize import main

    main(prog="python -m wavflow.synthesize")  # help and errors name the command as it was typed
