"""Fixtures for tests, demos and benchmarks: random checkpoints in the official layout and test signals.

Runtime modules of :mod:`gpa` never import this package; ``gpa make-checkpoint`` does, inside that subcommand.

- :mod:`gpa.testing.checkpoint`: :func:`make_tiny_checkpoint`, a complete random GPA checkpoint;
- :mod:`gpa.testing.llm`, :mod:`gpa.testing.glm`, :mod:`gpa.testing.bicodec`: each component's random writer;
- :mod:`gpa.testing.speech`: speech-like signals.
"""

from .checkpoint import MARKER, SIZES, STT_TEXT, make_tiny_checkpoint
from .speech import speech_like, speech_like_clips

__all__ = ["MARKER", "SIZES", "STT_TEXT", "make_tiny_checkpoint", "speech_like", "speech_like_clips"]
