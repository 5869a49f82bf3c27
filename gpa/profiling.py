"""Seconds per stage of GPA's work (audio decode, encoders, prefill, decoding, detokenizing), for benchmarks.

Off unless a caller opens :func:`record` in its thread; then every :func:`stage` adds its wall time to the
recording, after synchronising the GPU when asked (asynchronous kernels would otherwise be counted in the stage that
waits for them).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import torch

_local = threading.local()


@contextlib.contextmanager
def record(synchronize: bool = False) -> Iterator[dict[str, float]]:
    """Collect ``{stage: seconds}`` for the GPA calls made in this thread inside the block."""
    timings: dict[str, float] = {}
    previous = getattr(_local, "recording", None)
    _local.recording = (timings, synchronize and torch.cuda.is_available())
    try:
        yield timings
    finally:
        _local.recording = previous


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    recording = getattr(_local, "recording", None)
    if recording is None:
        yield
        return
    timings, synchronize = recording
    if synchronize:
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        yield
    finally:
        if synchronize:
            torch.cuda.synchronize()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
