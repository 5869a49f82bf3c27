"""Batched generation: the engine dispatch and the reference engine.

Two engines produce the same tokens (greedy ids and seeded samples; see tests/test_static_generation.py):

* the **reference engine** (this module): the transformers forward with a cache that grows every step, one
  step at a time. Its numerics are exactly the transformers model's, so the parity goldens hold bit for bit; it is
  the default on the CPU.
* the **static engine** (:mod:`gpa.static_generation`): a preallocated KV cache, the decoding step captured as CUDA
  graphs, logits processing inside the graph and host checks every few steps; the default on CUDA.

Prompts are left padded here; the attention mask and position ids keep the padding out of every row's result.
Sampling is reproducible per row (:mod:`gpa.sampling`). Rows stop at ``<|im_end|>``; once at most half the rows
are still running, finished rows are dropped from the batch (and the cache) so the tail of a batch with uneven
lengths costs only what is left of it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .inference import inference_mode
from .options import GenerationOptions
from .profiling import stage
from .sampling import block_stop, choose, process_logits, row_uniforms
from .vocab import TokenLayout, normalize_task


@dataclass(frozen=True)
class GenerationOutput:
    """One row's result. ``ids``: the generated tokens, without the prompt and without the stop token.
    ``stopped``: the row ended with ``<|im_end|>``; ``hit_max_new_tokens``: it was cut at its token limit."""

    ids: list[int]
    stopped: bool
    hit_max_new_tokens: bool

    @classmethod
    def from_tokens(cls, tokens: list[int], stop_id: int) -> GenerationOutput:
        if stop_id in tokens:
            return cls(tokens[: tokens.index(stop_id)], True, False)
        return cls(tokens, False, True)


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions,
    *,
    layout: TokenLayout,
    task: str,
    seeds: Sequence[int] | None = None,
    pad_id: int,
    max_new_tokens: Sequence[int] | None = None,
) -> list[GenerationOutput]:
    """Continue every prompt until ``<|im_end|>`` or its token limit, with ``options.engine``.

    ``seeds``: one per prompt, used when sampling (``None``: seed 0 for every row). ``pad_id`` fills padding (any
    id: it is masked out). ``max_new_tokens``: a limit per prompt (each at most ``options.max_new_tokens``; None:
    ``options.max_new_tokens`` for all).
    """
    options.validate()
    n = len(prompts)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts")
    limits = _limits(max_new_tokens, n, options.max_new_tokens)
    if not prompts:
        return []
    if resolve_engine(model, options.engine) == "static":
        from .static_generation import static_engine

        return static_engine(model).generate(
            prompts, options, layout=layout, task=task, seeds=seeds, pad_id=pad_id, max_new_tokens=limits
        )
    return generate_reference(model, prompts, options, layout=layout, task=task, seeds=seeds, pad_id=pad_id,
                              max_new_tokens=limits)


def resolve_engine(model, engine: str) -> str:
    """``"reference"`` or ``"static"``: ``"auto"`` is static on CUDA for the architectures it supports."""
    from .static_generation import unsupported_reason

    if engine == "reference":
        return engine
    reason = unsupported_reason(model)
    if engine == "static":
        if reason:
            raise ValueError(f"the static engine cannot run this model: {reason}")
        return engine
    device = next(model.parameters()).device
    return "static" if device.type == "cuda" and reason is None else "reference"


def _limits(max_new_tokens: Sequence[int] | None, n: int, most: int) -> list[int]:
    if max_new_tokens is None:
        return [most] * n
    limits = [int(m) for m in max_new_tokens]
    if len(limits) != n:
        raise ValueError(f"{len(limits)} token limits for {n} prompts")
    if any(not 1 <= m <= most for m in limits):
        raise ValueError(f"every token limit must lie between 1 and max_new_tokens ({most})")
    return limits


@inference_mode()
def generate_reference(
    model,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions,
    *,
    layout: TokenLayout,
    task: str,
    seeds: Sequence[int] | None,
    pad_id: int,
    max_new_tokens: list[int],
) -> list[GenerationOutput]:
    """The reference engine (see the module docstring); arguments as :func:`generate`, already checked."""
    task = normalize_task(task)
    n = len(prompts)
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
    with stage("prefill"):
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
    uniforms = row_uniforms(seeds, n, max_new).to(device) if options.do_sample else None
    limits = torch.tensor(max_new_tokens, device=device)

    rows = torch.arange(n, device=device)  # original index of each row still in the batch
    tokens = torch.full((n, max_new), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    with stage("decode steps"):
        for step in range(max_new):
            scores = out.logits[:, -1, :].float()
            if step < options.min_new_tokens:
                scores = block_stop(scores, torch.ones_like(done), layout.im_end)
            scores = process_logits(scores, options, seen=None if seen is None else seen[:, :vocab], allowed=allowed)
            chosen = choose(scores, options, None if uniforms is None else uniforms[:, step])
            chosen = torch.where(done, pad_id, chosen)
            tokens[rows, step] = chosen
            done = done | (chosen == layout.im_end) | (limits <= step + 1)
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
                rows, chosen, done, attention, next_position, limits = (
                    rows[keep],
                    chosen[keep],
                    done[keep],
                    attention[keep],
                    next_position[keep],
                    limits[keep],
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
    for row, limit in zip(tokens.tolist(), max_new_tokens, strict=True):
        results.append(GenerationOutput.from_tokens(row[:limit], layout.im_end))
    return results
