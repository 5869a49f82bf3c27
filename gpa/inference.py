"""The context every GPA model call runs in: no autograd, and no cuDNN attention.

A batch job rarely sees the same tensor shape twice: every batch has its own padded length, and every decoding
step its own key length. PyTorch's cuDNN attention builds an execution plan for each new shape, which on an H200
doubled the time of transcribing fresh clips (64 clips in batches of 32, real-size model: 9.2 s with it, 4.5 s
without; see docs/jobs.md). Flash and memory-efficient attention, which PyTorch picks otherwise, have no such cost.

Only the cuDNN switch is touched, so a caller's own choice of the other backends stands. The switch is
process-wide: while any thread is inside a GPA call it stays off, and the first thread in saves the caller's
setting, the last one out restores it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_lock = threading.Lock()
_depth = 0  # GPA calls in progress, all threads together
_saved = True  # the cuDNN attention setting before the first of them


@contextlib.contextmanager
def _without_cudnn_attention() -> Iterator[None]:
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(False)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.backends.cuda.enable_cudnn_sdp(_saved)


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    """``torch.inference_mode()`` with cuDNN attention turned off; usable as a decorator too."""
    with torch.inference_mode(), _without_cudnn_attention():
        yield
