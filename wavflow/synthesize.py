"""`python -m wavflow.synthesize MEL.npy [MORE.npy | DIR ...] [-o OUT]`: mel spectrograms to WAV files.

Only the entry point lives here; the code is wavflow/synthesis.py, whose `synthesize()` is the Python API
(`wavflow.synthesize`). Never import this module inside the package.
"""
from .synthesis import main

if __name__ == "__main__":
    main()
