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
    "load_mel": "wavflow.frontend",
    "load_audio": "wavflow.audio",
    "save_wav": "wavflow.audio",
    "load": "wavflow.checkpoint",
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
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wavflow' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
