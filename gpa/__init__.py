"""GPA (General-Purpose Audio): ASR, voice-cloning TTS and voice conversion with one causal LM.

The heavy parts (torch, transformers) load on first use, so ``gpa.audio`` stays cheap to import in CPU-only
workers.
"""

from importlib import import_module

_EXPORTS = {
    "GPA": "gpa.model",
    "TranscribeOptions": "gpa.options",
    "SynthesizeOptions": "gpa.options",
    "ConvertOptions": "gpa.options",
    "Speaker": "gpa.results",
    "Segment": "gpa.results",
    "Transcription": "gpa.results",
    "Synthesis": "gpa.results",
    "Conversion": "gpa.results",
    "GPAError": "gpa.errors",
    "load_audio": "gpa.audio",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpa' has no attribute {name!r}")
