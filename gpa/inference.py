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
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, get_args

import torch

from .errors import GPAError

_lock = threading.Lock()
_depth = 0  # GPA calls in progress, all threads together
# PyTorch allows one CUDA-graph capture at a time in a process, and emptying the allocator's cache during a capture
# raises before PyTorch 2.8 (is ignored since): captures (gpa.static_generation) and empty_cuda_cache take this lock,
# since other threads may run other GPA calls meanwhile.
cuda_capture_lock = threading.Lock()
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


# Arithmetic of the encoders (GLM tokenizer, wav2vec2, BiCodec): "float32" is exact and the default; "bfloat16"
# runs matrix products and convolutions under bf16 autocast (weights stay float32) for speed on a GPU. Nearest-code
# selection always runs in float32, but the features it compares are rounded, so tokens can differ from the
# float32 ones: how often is measured (benchmarks/encoder_agreement.py), not assumed.
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(precision: str, device: str | torch.device | None = None) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS` and usable on ``device``, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"encoder precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bfloat16" and device is not None and torch.device(device).type != "cuda":
        # oneDNN's bf16 grouped convolutions return wrong values on CPUs without native bf16 (wav2vec2's
        # positional convolution: relative error 1.1 against float32, PyTorch 2.13), so tokens would be garbage.
        raise ValueError(f"encoder precision 'bfloat16' needs a CUDA device, not {torch.device(device).type}")
    return precision  # type: ignore[return-value]


def encoder_precision(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The arithmetic context of an encoder forward pass (autocast is per thread: other threads are unaffected)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=check_precision(precision, device) == "bfloat16")


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Float32 arithmetic inside an :func:`encoder_precision` block (spectrograms, nearest-code distances)."""
    return torch.autocast(device.type, enabled=False)


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.25,
                   max_tokens: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``batch_size``, longest first. A batch closes early rather than
    pad more than ``max_padding`` of its content (padded size = items x longest): padded frames are computed and
    thrown away. ``max_tokens`` also bounds a batch's padded size (an item longer than that is a batch alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    content = 0
    for i in order:
        padded = (len(current) + 1) * (lengths[current[0]] if current else lengths[i])
        if current and (len(current) >= batch_size or padded > (1 + max_padding) * (content + lengths[i])
                        or (max_tokens is not None and padded > max_tokens)):
            batches.append(current)
            current, content = [], 0
        current.append(i)
        content += lengths[i]
    if current:
        batches.append(current)
    return batches


def isolated(run: Callable[[list], list], items: list, batch_size: int, size: Callable | None = None) -> list:
    """``run`` over ``items`` in batches (of similar ``size`` when given, largest first: the first batch meets the
    largest memory need, so a generation engine sizes its cache once and an out-of-memory shows at once); when a
    batch fails, its items are retried one by one so the failure lands only on the items that cause it. Returns
    one output or :class:`GPAError` per item."""
    order = sorted(range(len(items)), key=lambda i: -size(items[i])) if size else list(range(len(items)))
    outputs: list = [None] * len(items)
    for first in range(0, len(order), max(1, batch_size)):
        chunk = order[first : first + batch_size]
        try:
            results = run([items[i] for i in chunk])
        except Exception as exc:
            if len(chunk) == 1:
                results = [as_error(exc)]
            else:
                results = []
                for i in chunk:
                    try:
                        results.append(run([items[i]])[0])
                    except Exception as single_exc:
                        results.append(as_error(single_exc))
        for i, result in zip(chunk, results, strict=True):
            outputs[i] = result
    return outputs


def as_error(exc: Exception) -> GPAError:
    """``exc`` as the error of the items it failed (a GPU out of memory also frees the cache for the next batch)."""
    if isinstance(exc, GPAError):
        return exc
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        empty_cuda_cache()
    error = GPAError(f"{type(exc).__name__}: {str(exc)[:300]}")
    error.__cause__ = exc
    return error


def empty_cuda_cache() -> None:
    """Give the allocator's cached GPU memory back (never during another thread's CUDA-graph capture)."""
    if torch.cuda.is_available():
        with cuda_capture_lock:
            torch.cuda.empty_cache()
