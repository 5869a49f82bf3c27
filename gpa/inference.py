"""The context every GPA model call runs in: no autograd, and attention kernels suited to ever-changing shapes.

A batch job rarely sees the same tensor shape twice: every batch has its own padded length, and every decoding
step its own key length. PyTorch's cuDNN attention builds an execution plan for each new shape, which on an H200
doubled the time of transcribing fresh clips (64 clips in batches of 32, real-size model: 9.2 s with it, 4.5 s
without; see docs/jobs.md). Flash and memory-efficient attention have no such per-shape cost, and the math kernel
remains for everything else (the CPU included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    """``torch.inference_mode()`` with cuDNN attention turned off; usable as a decorator too."""
    with torch.inference_mode(), sdpa_kernel(ATTENTION_BACKENDS):
        yield
