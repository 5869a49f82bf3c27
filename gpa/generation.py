"""Batched generation with per-row reproducible sampling.

One loop over decoding steps with the model's forward and a KV cache; every per-step operation is a tensor op on
the model's device over the whole batch. Prompts are left padded; the attention mask and position ids keep the
padding out of every row's result.

Reproducibility: row ``i`` samples step ``t`` by inverting its probability CDF at ``u[i, t]``, where ``u[i]`` is
drawn up front from a ``torch.Generator`` seeded with that row's seed. A row's output therefore depends only on
its own prompt and seed, never on its batch mates (and greedy rows never on them either). The logits processors
follow Hugging Face's semantics and order: repetition penalty (over the row's prompt and generated tokens,
padding excluded), then for sampling temperature, top-k and top-p.

Rows stop at ``<|im_end|>``; once at most half the rows are still running, finished rows are dropped from the
batch (and the cache) so the tail of a batch with uneven lengths costs only what is left of it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .inference import inference_mode
from .options import GenerationOptions
from .vocab import TokenLayout, normalize_task


@dataclass(frozen=True)
class GenerationOutput:
    """One row's result. ``ids``: the generated tokens, without the prompt and without the stop token.
    ``stopped``: the row ended with ``<|im_end|>``; ``hit_max_new_tokens``: it was cut at ``max_new_tokens``."""

    ids: list[int]
    stopped: bool
    hit_max_new_tokens: bool


@inference_mode()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions,
    *,
    layout: TokenLayout,
    task: str,
    seeds: Sequence[int] | None = None,
    pad_id: int,
) -> list[GenerationOutput]:
    """Continue every prompt until ``<|im_end|>`` or ``options.max_new_tokens``.

    ``seeds``: one per prompt, used when sampling (``None``: seed 0 for every row). ``pad_id`` fills the left
    padding (any id: it is masked out).
    """
    task = normalize_task(task)
    options.validate()
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    n = len(prompts)
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts")
    device = next(model.parameters()).device
    max_new = options.max_new_tokens

    width = max(len(p) for p in prompts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention[i, width - len(prompt) :] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    next_position = attention.sum(-1)

    cache = DynamicCache(config=model.config)
    # transformers 5 renamed the forward's `past_key_values` to `cache`; 4.x only knows the old name.
    cache_kw = {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **cache_kw,
    )
    vocab = out.logits.shape[-1]
    if int(input_ids.max()) >= vocab:
        raise ValueError(f"prompt token id {int(input_ids.max())} is outside the model's vocabulary ({vocab})")

    allowed = layout.allowed_mask(task, vocab, device) if options.constrained else None
    seen = None
    if options.repetition_penalty != 1.0:
        # (rows, vocab + 1): padding is scattered into the spare last column, which is never read.
        seen = torch.zeros((n, vocab + 1), dtype=torch.bool, device=device)
        seen.scatter_(1, torch.where(attention.bool(), input_ids, vocab), True)
    uniforms = None
    if options.do_sample:
        row_seeds = [0] * n if seeds is None else [int(s) for s in seeds]
        uniforms = torch.stack(
            [torch.rand(max_new, generator=torch.Generator().manual_seed(s & 0xFFFF_FFFF_FFFF_FFFF)) for s in row_seeds]
        ).to(device)

    rows = torch.arange(n, device=device)  # original index of each row still in the batch
    tokens = torch.full((n, max_new), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(max_new):
        logits = out.logits[:, -1, :].float()
        scores = process_logits(logits, options, seen=None if seen is None else seen[:, :vocab], allowed=allowed)
        if options.do_sample:
            chosen = sample(scores, uniforms[:, step])
        else:
            chosen = scores.argmax(-1)
        chosen = torch.where(done, pad_id, chosen)
        tokens[rows, step] = chosen
        done = done | (chosen == layout.im_end)
        if step == max_new - 1:
            break
        running = int((~done).sum())  # the one host sync per step
        if running == 0:
            break
        if seen is not None:
            seen[torch.arange(len(chosen), device=device), chosen] = True
        if running <= len(rows) // 2:
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, chosen, done, attention, next_position = (
                rows[keep],
                chosen[keep],
                done[keep],
                attention[keep],
                next_position[keep],
            )
            seen = None if seen is None else seen[keep]
            uniforms = None if uniforms is None else uniforms[keep]
        attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
        out = model(
            input_ids=chosen[:, None],
            attention_mask=attention,
            position_ids=next_position[:, None],
            use_cache=True,
            **cache_kw,
        )
        next_position = next_position + 1

    results = []
    for row in tokens.tolist():
        if layout.im_end in row:
            results.append(GenerationOutput(row[: row.index(layout.im_end)], True, False))
        else:
            results.append(GenerationOutput(row, False, True))
    return results


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
        drop[:, -1] = False  # keep at least the most likely token
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
