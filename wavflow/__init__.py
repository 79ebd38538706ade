"""wavflow: flow-based neural vocoders (WaveNet teacher, WaveGlow, Parallel WaveNet student), mel to speech.

    import wavflow
    mel = wavflow.mel_spectrogram(wavflow.load_audio("speech.wav", 22050))      # [1, 80, F]
    audio = wavflow.synthesize(mel)                                              # [1, F * 256], shipped WaveGlow
    model = wavflow.load(wavflow.shipped_checkpoint("waveglow"))                # or any checkpoint path
    audio = wavflow.synthesize(wavflow.example_mel())                            # the example that ships with wavflow
    for chunk in wavflow.stream(mel, chunk_seconds=0.5):                         # audio as it is made, bounded memory
        ...

Names are imported on first use, so `import wavflow` stays cheap and `python -m wavflow.X` runs cleanly.

From a shell, one command: `wavflow synthesize|stream|mel|train|evaluate|benchmark|export|convert ...` (also
`python -m wavflow ...`; `wavflow --help`), one module per subcommand in wavflow/commands/.

Where things live:
    inference.py   the synthesis API: synthesize, load (its load_checkpoint), load_vocoder, vocode
    streaming.py   stream: chunk by chunk, through each model's streamer
    melinput.py    mels coming in: .npy files and layouts, statistics files, the convention checks
    frontend.py    MelConfig and the mel computation itself (mel_spectrogram)
    noise.py       per-mel seeds and the noise drawn per absolute position (docs/design.md section 6a)
    device.py      devices ("auto") and whether bf16 runs natively
    models/        the families and the Vocoder interface through which everything else calls them
    export.py, evaluate.py, denoiser.py, espnet.py, benchmark/: ONNX, evaluation, NVIDIA's denoiser, ESPnet, speed
    cli.py         what the command lines share (one-line errors, exit status 2); only command-line code uses it
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "WavflowError": "wavflow.errors",
    "MelConfig": "wavflow.frontend",
    "MelSpectrogram": "wavflow.frontend",
    "mel_spectrogram": "wavflow.frontend",
    "load_mel": "wavflow.melinput",
    "load_audio": "wavflow.audio",
    "save_wav": "wavflow.audio",
    "load": "wavflow.inference:load_checkpoint",
    "save_checkpoint": "wavflow.checkpoint",
    "build_model": "wavflow.models",
    "WaveGlow": "wavflow.models.waveglow",
    "WaveGlowConfig": "wavflow.models.waveglow",
    "WaveNet": "wavflow.models.wavenet",
    "WaveNetConfig": "wavflow.models.wavenet",
    "IAFStudent": "wavflow.models.student",
    "StudentConfig": "wavflow.models.student",
    "synthesize": "wavflow.inference",
    "stream": "wavflow.streaming",
    "export_onnx": "wavflow.export",
    "LJSpeech": "wavflow.data",
    "Denoiser": "wavflow.denoiser",
    "example_mel": "wavflow.resources",
    "shipped_checkpoint": "wavflow.resources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attribute = _EXPORTS[name].partition(":")  # "module:attribute" where the names differ
        value = getattr(importlib.import_module(module), attribute or name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wavflow' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
