"""Logits processing and reproducible sampling, shared by both generation engines.

The processors follow Hugging Face's semantics and order: the stop token blocked below ``min_new_tokens``,
repetition penalty (over the row's prompt and generated tokens, padding excluded), then for sampling temperature,
top-k and top-p. Every function here is plain tensor work without host synchronisation, so the static engine can
run it inside a captured CUDA graph.

Reproducibility: row ``i`` samples step ``t`` by inverting its probability CDF at ``u[i, t]``, where ``u[i]`` is
drawn up front from a ``torch.Generator`` seeded with that row's seed. A row's output therefore depends only on
its own prompt and seed, never on its batch mates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .options import GenerationOptions


def row_uniforms(seeds: Sequence[int] | None, n: int, steps: int) -> torch.Tensor:
    """``(n, steps)`` uniform numbers in ``[0, 1)``: row ``i`` from a generator seeded with ``seeds[i]`` (0 if
    ``seeds`` is None)."""
    row_seeds = [0] * n if seeds is None else [int(s) for s in seeds]
    return torch.stack(
        [torch.rand(steps, generator=torch.Generator().manual_seed(s & 0xFFFF_FFFF_FFFF_FFFF)) for s in row_seeds]
    )


def block_stop(scores: torch.Tensor, blocked: torch.Tensor, stop_index: int) -> torch.Tensor:
    """``scores`` with column ``stop_index`` at -inf in the rows where ``blocked`` (``(rows,)`` bool) is set:
    Hugging Face's ``min_new_tokens``."""
    scores = scores.clone()
    scores[:, stop_index] = torch.where(blocked, float("-inf"), scores[:, stop_index])
    return scores


def process_logits(
    logits: torch.Tensor,
    options: GenerationOptions,
    *,
    seen: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores after constraints and Hugging Face's processors, for a ``(rows, vocab)`` float tensor.

    ``seen``: boolean ``(rows, vocab)`` of tokens in each row's context (for the repetition penalty);
    ``allowed``: boolean ``(vocab,)`` of tokens the task may emit.
    """
    scores = logits
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    penalty = options.repetition_penalty
    if seen is not None and penalty != 1.0:
        # HF: a seen token's logit is divided by the penalty if positive, multiplied if negative.
        penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(seen, penalized, scores)
    if not options.do_sample:
        return scores
    if options.temperature != 1.0:
        scores = scores / options.temperature
    if options.top_k > 0:
        k = min(options.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - options.top_p)
        drop[:, -1].fill_(False)  # keep at least the most likely token (fill_: no tensor made from Python data)
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def sample(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row from ``softmax(scores)``, by inverse CDF at the row's uniform number in ``[0, 1)``."""
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    # right=True: the first index whose cumulative probability exceeds the target, so never a zero-prob token.
    chosen = torch.searchsorted(cdf, target, right=True).squeeze(1)
    # Rounding can put the target at the very top: fall back to the last token with non-zero probability.
    return torch.minimum(chosen, cdf.argmax(dim=-1))


def choose(scores: torch.Tensor, options: GenerationOptions, uniforms: torch.Tensor | None) -> torch.Tensor:
    """The next token of every row: sampled at ``uniforms`` (``(rows,)``) when sampling, else the argmax."""
    return sample(scores, uniforms) if options.do_sample else scores.argmax(-1)
