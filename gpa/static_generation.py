"""The static engine: decoding over a preallocated KV cache, with the decoding step captured as CUDA graphs.

The reference engine (:mod:`gpa.generation`) spends a decoding step launching ~1,600 small kernels from Python
and waits for the GPU once per step, so a 0.3B model is bound by the host, not the card. Here:

* **One arena per engine**, allocated once and kept between calls: a KV cache of ``rows x positions`` per layer,
  the last logits, the tokens to feed, positions, per-row step counts and limits, the repetition-penalty mask,
  the rows' uniform numbers and the generated tokens. Every tensor a step touches lives there at a fixed address.
* **The decoding step is one function over the arena** (forward of the fed tokens with the KV write, logits
  processing, choice, bookkeeping), free of host synchronisation. On CUDA it is captured once per (batch bucket,
  key-length bucket) as a CUDA graph and replayed: one launch per step. The attention reads only the key-length
  bucket the rows have reached, not the whole cache.
* **The host looks every ``check_every`` steps**: it collects finished rows, refills their slots with waiting
  prompts (continuous batching) and, when no prompt waits, moves the running rows down so that a smaller batch
  bucket serves them.
* **Prompts are right-aligned at position 0 of their row** (no left padding): a row's cache index is its position.
  Prefill runs the same layer code over a right-padded chunk of prompts with causal attention.
* **Constrained decoding computes the output layer over the allowed ids only** (the semantic tokens for TTS/VC:
  8,193 of 180,445 rows of the output matrix); scores, penalty and sampling work in that candidate space.

The layers are the transformers modules themselves (norms, projections, MLP, rotary embedding); only the attention
and its cache are this module's. Supported: Qwen3 and Qwen2 decoders without sliding windows. Numerics differ from
the transformers forward by float rounding only (float32: greedy ids and seeded samples equal the reference
engine's on the parity goldens and random prompts, tests/test_static_generation.py).

The prefill takes embeddings (:meth:`StaticEngine._prefill` embeds token ids first), which is where a model family
feeding continuous audio embeddings to its decoder would enter.
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .generation import GenerationOutput
from .inference import cuda_capture_lock, empty_cuda_cache, inference_mode, length_batches
from .options import GenerationOptions
from .profiling import stage
from .sampling import block_stop, choose, process_logits, row_uniforms
from .vocab import TokenLayout, normalize_task

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2")
KEY_BUCKET = 256  # key-length buckets of the decoding graphs: attention reads a multiple of this many positions
PREFILL_TOKENS = 16384  # padded prompt tokens per prefill chunk (bounds the prefill's activations)
CPU_ARENA_BYTES = 2 << 30
CUDA_ARENA_SHARE = 0.5  # of the memory free on the card when the arena is sized


def unsupported_reason(model) -> str | None:
    """Why the static engine cannot run ``model``, or None."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = str(rope.get("rope_type", rope.get("type", "default")))
    if "dynamic" in rope_type or rope_type == "longrope":
        # these recompute their frequencies from the positions' values inside the forward (host synchronisation
        # and a new buffer per call): not capturable
        return f"RoPE type {rope_type!r}"
    return None


_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def static_engine(model) -> StaticEngine:
    """The engine of ``model``, created on first use and kept with the model (its arena and graphs with it)."""
    with _engines_lock:
        engine = _engines.get(model)
        if engine is None:
            engine = _engines[model] = StaticEngine(model)
        return engine


@dataclass(frozen=True)
class _Plan:
    """What a call's graphs bake in: the logits processing, the candidate ids and the stop token."""

    task: str
    stop_token: int
    constrained: bool
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    min_new_tokens: int

    @classmethod
    def of(cls, options: GenerationOptions, task: str, stop_token: int) -> _Plan:
        return cls(task, stop_token, options.constrained, options.do_sample, options.temperature, options.top_k,
                   options.top_p, options.repetition_penalty, options.min_new_tokens)

    def options(self) -> GenerationOptions:
        return GenerationOptions(do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k,
                                 top_p=self.top_p, repetition_penalty=self.repetition_penalty,
                                 constrained=False)  # the candidate space is the constraint


class _Arena:
    """Every tensor the decoding step reads or writes, at fixed addresses."""

    def __init__(self, engine: StaticEngine, rows: int, positions: int, steps: int, candidates: int):
        device, dtype = engine.device, engine.dtype
        self.rows, self.positions, self.steps, self.candidates = rows, positions, steps, candidates
        shape = (rows, engine.kv_heads, positions, engine.head_dim)
        # zeros, not empty: free rows still run through the step and must not read NaN bit patterns
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(engine.layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(engine.layers)]
        self.logits = torch.zeros((rows, candidates), device=device, dtype=torch.float32)
        self.fed = torch.zeros(rows, device=device, dtype=torch.long)  # the token each row feeds next
        self.position = torch.zeros(rows, device=device, dtype=torch.long)  # where that token goes in the cache
        self.step = torch.zeros(rows, device=device, dtype=torch.long)  # tokens generated so far
        self.limit = torch.ones(rows, device=device, dtype=torch.long)
        self.done = torch.ones(rows, device=device, dtype=torch.bool)
        # column `candidates` / `steps` are sinks for finished rows' writes
        self.seen = torch.zeros((rows, candidates + 1), device=device, dtype=torch.bool)
        self.uniforms = torch.zeros((rows, steps + 1), device=device, dtype=torch.float32)
        self.out = torch.zeros((rows, steps + 1), device=device, dtype=torch.long)
        self.key_index = torch.arange(positions, device=device)

    @staticmethod
    def bytes_per_row(engine: StaticEngine, positions: int, steps: int, candidates: int) -> int:
        element = torch.finfo(engine.dtype).bits // 8
        cache = 2 * engine.layers * engine.kv_heads * engine.head_dim * positions * element
        return cache + candidates * 5 + steps * 12 + 64


class StaticEngine:
    """Static-cache decoding for one model (see the module docstring).

    ``cuda_graphs``: capture the decoding step on CUDA (None: whenever the model is on CUDA); it turns False, with
    one warning, when a capture fails (the call goes on with eager steps). ``check_every``:
    decoding steps between two looks of the host. ``max_rows``: most rows decoded at once (None: as many as the
    arena's memory share holds).
    """

    def __init__(self, model, *, cuda_graphs: bool | None = None, check_every: int = 8, max_rows: int | None = None,
                 arena_bytes: int | None = None):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"the static engine cannot run this model: {reason}")
        self.model = model
        config = model.config
        decoder = model.model
        self.embed, self.blocks, self.norm, self.rotary = (decoder.embed_tokens, decoder.layers, decoder.norm,
                                                           decoder.rotary_emb)
        self.output_weight = model.lm_head.weight
        self.output_bias = getattr(model.lm_head, "bias", None)
        # the model's own RoPE application (Qwen2 and Qwen3 share it)
        self.apply_rope = sys.modules[type(decoder.layers[0].self_attn).__module__].apply_rotary_pos_emb
        attention = decoder.layers[0].self_attn
        self.layers = config.num_hidden_layers
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.group = self.heads // self.kv_heads
        self.qk_norm = hasattr(attention, "q_norm")
        self.vocab = self.output_weight.shape[0]
        self.device, self.dtype = self.output_weight.device, self.output_weight.dtype
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.check_every = max(1, int(check_every))
        self.max_rows = max_rows
        self.arena_bytes = arena_bytes
        self.arena: _Arena | None = None
        self.plan: _Plan | None = None
        self.candidate_ids: torch.Tensor | None = None  # None: every id is a candidate
        self.candidate_weight: torch.Tensor | None = None
        self.candidate_of: torch.Tensor | None = None  # (vocab,) candidate index of each id, `candidates` if none
        self.stop_candidate = self.stop_token = 0
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.graph_pool = None  # the memory pool all graphs share (safe: no graph's output lives there)
        self.capture_stream = None  # the side stream of warm-ups and captures, made on first use
        self.lock = threading.Lock()

    # --- the public call ------------------------------------------------------------------------------------

    @inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        options: GenerationOptions,
        *,
        layout: TokenLayout,
        task: str,
        seeds: Sequence[int] | None,
        pad_id: int,
        max_new_tokens: Sequence[int],
    ) -> list[GenerationOutput]:
        """As :func:`gpa.generation.generate` (arguments already checked there)."""
        prompts = [[int(t) for t in p] for p in prompts]
        highest = max(max(p) for p in prompts)
        lowest = min(min(p) for p in prompts)
        if highest >= self.vocab or lowest < 0:
            bad = highest if highest >= self.vocab else lowest
            raise ValueError(f"prompt token id {bad} is outside the model's vocabulary ({self.vocab})")
        limits = list(max_new_tokens)
        with self.lock:
            self._prepare(_Plan.of(options, normalize_task(task), layout.im_end), layout, prompts, limits,
                          options.max_new_tokens)
            uniforms = row_uniforms(seeds, len(prompts), options.max_new_tokens) if options.do_sample else None
            return self._decode(prompts, uniforms, limits, layout, pad_id)

    # --- set-up ---------------------------------------------------------------------------------------------

    def _prepare(self, plan: _Plan, layout: TokenLayout, prompts: list[list[int]], limits: list[int],
                 steps: int) -> None:
        """Candidates of ``plan`` and an arena that fits the call; graphs of another plan or arena are dropped.

        A row needs its prompt, its own token limit and one more position (a finished row keeps writing at its
        frozen position), not ``steps`` (``max_new_tokens``) for every prompt: with per-input limits (ASR's tokens
        per second of a window), more rows fit."""
        if plan != self.plan:
            self._drop_graphs()
            self.plan = plan
            self.stop_token = plan.stop_token
            if plan.constrained:
                allowed = layout.allowed_mask(plan.task, self.vocab)
                ids = allowed.nonzero().squeeze(1).to(self.device)
                self.candidate_ids = ids
                self.candidate_weight = self.output_weight.index_select(0, ids).contiguous()
                self.candidate_of = torch.full((self.vocab,), len(ids), dtype=torch.long, device=self.device)
                self.candidate_of[ids] = torch.arange(len(ids), device=self.device)
                self.stop_candidate = int(self.candidate_of[layout.im_end])
            else:
                self.candidate_ids = self.candidate_weight = self.candidate_of = None
                self.stop_candidate = layout.im_end
        candidates = self.vocab if self.candidate_ids is None else len(self.candidate_ids)
        positions = _round_up(max(len(p) + limit for p, limit in zip(prompts, limits, strict=True)) + 1, KEY_BUCKET)
        arena = self.arena
        fits = (arena is not None and arena.candidates == candidates and arena.positions >= positions
                and arena.steps == steps and arena.rows >= min(len(prompts), self._row_capacity(arena.positions,
                                                                                                   steps, candidates)))
        if fits:
            return
        self._drop_graphs()
        self.arena = None
        self._empty_cache()
        rows = min(len(prompts), self._row_capacity(positions, steps, candidates))
        if rows < 1:
            raise torch.OutOfMemoryError(
                f"the static engine's memory share holds no row of {positions} positions; lower max_new_tokens or "
                "use the reference engine")
        self.arena = _Arena(self, rows, positions, steps, candidates)

    def _row_capacity(self, positions: int, steps: int, candidates: int) -> int:
        per_row = _Arena.bytes_per_row(self, positions, steps, candidates)
        budget = self.arena_bytes
        if budget is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                held = 0 if self.arena is None else self.arena.rows * _Arena.bytes_per_row(
                    self, self.arena.positions, self.arena.steps, self.arena.candidates)
                budget = int((free + held) * CUDA_ARENA_SHARE)
            else:
                budget = CPU_ARENA_BYTES
        rows = budget // per_row
        return int(rows if self.max_rows is None else min(rows, self.max_rows))

    # --- the decoding loop ----------------------------------------------------------------------------------

    def _decode(self, prompts, uniforms, limits, layout: TokenLayout, pad_id: int) -> list[GenerationOutput]:
        arena = self.arena
        results: list[GenerationOutput | None] = [None] * len(prompts)
        # longest first: similar lengths share prefill chunks, and the largest rows are placed while memory is free
        waiting = collections.deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))
        slot_item = [-1] * arena.rows  # prompt in each slot, -1 when free
        slot_reach = [0] * arena.rows  # an upper bound of the slot's next position
        arena.done.fill_(True)
        while True:
            free = [s for s in range(arena.rows) if slot_item[s] < 0]
            running = arena.rows - len(free)
            if waiting and (running == 0 or len(free) >= max(1, arena.rows // 4)):
                placed = []
                for slot in free[: len(waiting)]:
                    placed.append((slot, waiting.popleft()))
                with stage("prefill"):
                    self._fill(placed, prompts, uniforms, limits)
                for slot, item in placed:
                    slot_item[slot], slot_reach[slot] = item, len(prompts[item])
            elif not waiting and running:
                self._compact(slot_item, slot_reach)
            if all(item < 0 for item in slot_item):
                break
            live = [s for s in range(arena.rows) if slot_item[s] >= 0]
            batch = _bucket_ceiling(live[-1] + 1, arena.rows)
            keys = min(_round_up(max(slot_reach[s] for s in live) + self.check_every + 1, KEY_BUCKET),
                       arena.positions)
            with stage("decode steps"):
                for _ in range(self.check_every):
                    self._run_step(batch, keys)
                self._collect(slot_item, batch, results, layout)
            for s in live:
                slot_reach[s] += self.check_every
        return results  # type: ignore[return-value]

    def _collect(self, slot_item: list[int], batch: int, results: list, layout: TokenLayout) -> None:
        """Move finished rows' tokens into ``results`` and free their slots (one host synchronisation)."""
        arena = self.arena
        done = arena.done[:batch].tolist()
        finished = [s for s in range(batch) if done[s] and slot_item[s] >= 0]
        if not finished:
            return
        index = torch.tensor(finished, device=self.device)
        counts = arena.step.index_select(0, index).tolist()
        tokens = arena.out.index_select(0, index).tolist()
        for slot, count, row in zip(finished, counts, tokens, strict=True):
            results[slot_item[slot]] = GenerationOutput.from_tokens(row[:count], layout.im_end)
            slot_item[slot] = -1

    def _compact(self, slot_item: list[int], slot_reach: list[int]) -> None:
        """Move running rows from above the batch bucket they need into free slots below it."""
        live = [s for s in range(len(slot_item)) if slot_item[s] >= 0]
        target = _bucket_ceiling(len(live), self.arena.rows)
        movers = [s for s in live if s >= target]
        holes = [s for s in range(target) if slot_item[s] < 0]
        if not movers:
            return
        src = torch.tensor(movers, device=self.device)
        dst = torch.tensor(holes[: len(movers)], device=self.device)
        arena = self.arena
        for tensor in (*arena.keys, *arena.values, arena.logits, arena.fed, arena.position, arena.step, arena.limit,
                       arena.done, arena.seen, arena.uniforms, arena.out):
            tensor.index_copy_(0, dst, tensor.index_select(0, src))
        arena.done.index_fill_(0, src, True)
        for s, d in zip(movers, holes, strict=False):
            slot_item[d], slot_reach[d] = slot_item[s], slot_reach[s]
            slot_item[s] = -1

    # --- prefill --------------------------------------------------------------------------------------------

    def _fill(self, placed: list[tuple[int, int]], prompts, uniforms, limits) -> None:
        """Prefill ``(slot, prompt index)`` pairs and reset those slots' state."""
        arena = self.arena
        # chunks of similar lengths: a prefill computes every padded position
        for chunk in length_batches([len(prompts[item]) for _, item in placed], len(placed),
                                    max_tokens=PREFILL_TOKENS):
            self._prefill_chunk([placed[k] for k in chunk], prompts)
        slots = torch.tensor([s for s, _ in placed], device=self.device)
        items = [i for _, i in placed]
        arena.position.index_copy_(0, slots, torch.tensor([len(prompts[i]) for i in items], device=self.device))
        arena.step.index_fill_(0, slots, 0)
        arena.limit.index_copy_(0, slots, torch.tensor([limits[i] for i in items], device=self.device))
        arena.done.index_fill_(0, slots, False)
        arena.out.index_fill_(0, slots, 0)
        arena.seen.index_fill_(0, slots, False)
        if self.plan.repetition_penalty != 1.0:
            for slot, item in placed:
                ids = torch.tensor(prompts[item], device=self.device)
                arena.seen[slot, self._candidate_index(ids)] = True
        if uniforms is not None:
            arena.uniforms[:, : arena.steps].index_copy_(0, slots, uniforms[items].to(self.device))

    def _prefill_chunk(self, chunk: list[tuple[int, int]], prompts) -> None:
        lengths = torch.tensor([len(prompts[i]) for _, i in chunk], device=self.device)
        width = int(lengths.max())
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, item) in enumerate(chunk):
            ids[row, : len(prompts[item])] = torch.tensor(prompts[item])
        self._prefill(torch.tensor([s for s, _ in chunk], device=self.device), self.embed(ids.to(self.device)),
                      lengths)

    def _prefill(self, slots: torch.Tensor, embeddings: torch.Tensor, lengths: torch.Tensor) -> None:
        """Run ``embeddings`` (``(rows, width, hidden)``, right-padded to ``lengths``) into the cache rows ``slots``
        and leave each row's last-token logits in the arena. The padding must be finite (token ids embed to finite
        vectors): its cache entries are masked later, and a masked NaN would still poison the attention."""
        rows, width, _ = embeddings.shape
        positions = torch.arange(width, device=self.device).expand(rows, width)
        cos, sin = self.rotary(embeddings, positions)
        hidden = self._layers(embeddings, cos, sin, None, slots, None, width)
        last = hidden[torch.arange(rows, device=self.device), lengths - 1]
        self.arena.logits.index_copy_(0, slots, self._logits(last))

    # --- the model --------------------------------------------------------------------------------------------

    def _layers(self, hidden, cos, sin, mask, slots, positions, keys: int) -> torch.Tensor:
        """The decoder over ``hidden`` ``(rows, width, size)``. Prefill (``positions`` None): keys and values go to
        cache rows ``slots`` at positions ``0..width``; decoding (width 1): at ``positions`` of rows ``slots``, and
        attention reads the first ``keys`` positions of the cache."""
        rows, width, _ = hidden.shape
        for layer, block in enumerate(self.blocks):
            attention = block.self_attn
            x = block.input_layernorm(hidden)
            q = attention.q_proj(x).view(rows, width, self.heads, self.head_dim)
            k = attention.k_proj(x).view(rows, width, self.kv_heads, self.head_dim)
            v = attention.v_proj(x).view(rows, width, self.kv_heads, self.head_dim)
            if self.qk_norm:
                q, k = attention.q_norm(q), attention.k_norm(k)
            q, k = self.apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            v = v.transpose(1, 2)
            cache_k, cache_v = self.arena.keys[layer], self.arena.values[layer]
            if positions is None:
                cache_k[slots, :, :width] = k
                cache_v[slots, :, :width] = v
            else:
                cache_k[slots, :, positions] = k[:, :, 0]
                cache_v[slots, :, positions] = v[:, :, 0]
                k, v = cache_k[:rows, :, :keys], cache_v[:rows, :, :keys]
            out = self._attend(q, k, v, mask)
            hidden = hidden + attention.o_proj(out)
            hidden = hidden + block.mlp(block.post_attention_layernorm(hidden))
        return self.norm(hidden)

    def _attend(self, q, k, v, mask) -> torch.Tensor:
        """Attention of ``q`` (rows, heads, width, head_dim) over the keys and values of their key heads.

        ``mask`` None: a prefill of right-padded prompts, where causal attention alone is exact for every real
        position (padding comes after them); what padded positions compute is never read, and their cache entries
        lie past the row's position, masked until decoding overwrites them. Causal attention needs no mask tensor
        and lets SDPA use its fastest kernels; keys and values are repeated per query head, a copy of the
        chunk's own.
        Decoding: grouped-query attention without repeating the cache: the ``group`` query heads that share a key
        head are laid out as extra query positions of that head."""
        rows, _, width, _ = q.shape
        if mask is None:
            if self.group > 1:
                k, v = k.repeat_interleave(self.group, dim=1), v.repeat_interleave(self.group, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
            return out.transpose(1, 2).reshape(rows, width, -1)
        q = q.reshape(rows, self.kv_heads, self.group * width, self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        return out.view(rows, self.heads, width, self.head_dim).transpose(1, 2).reshape(rows, width, -1)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.output_weight if self.candidate_weight is None else self.candidate_weight
        bias = self.output_bias
        if bias is not None and self.candidate_ids is not None:
            bias = bias.index_select(0, self.candidate_ids)
        return F.linear(hidden, weight, bias).float()

    def _candidate_index(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.candidate_of is None else self.candidate_of[ids]

    # --- one decoding step -----------------------------------------------------------------------------------

    def _run_step(self, batch: int, keys: int) -> None:
        """One decoding step: eager, or the CUDA graph of ``(batch, keys)``, captured on its first use."""
        if not self.cuda_graphs:
            self._step(batch, keys)
            return
        graph = self.graphs.get((batch, keys))
        if graph is not None:
            graph.replay()
            return
        # once per (batch, keys) bucket: timed apart from the steady decoding steps it is part of
        with stage("graph capture"):
            self._warm_up(batch, keys)  # this call's step: a capture records the step without running it
            try:
                graph = self._capture(batch, keys)
            except Exception as exc:  # noqa: BLE001 - any failure of a capture: decode eagerly instead
                cause = exc.__cause__ or exc.__context__
                reason = f"{type(exc).__name__}: {str(exc)[:300]}" + (
                    f" (after {type(cause).__name__}: {str(cause)[:300]})" if cause is not None else "")
                log.warning("CUDA graph capture of the decoding step failed, this engine decodes with eager steps "
                            "from now on: %s", reason)
                self._drop_graphs()
                self.cuda_graphs = False
                return
        self.graphs[(batch, keys)] = graph

    def _warm_up(self, batch: int, keys: int) -> None:
        """The step, eagerly on the capture stream: lazily made kernels and per-stream handles (cuBLAS
        workspaces) come into being outside the capture."""
        if self.capture_stream is None:
            self.capture_stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        self.capture_stream.wait_stream(current)
        with torch.cuda.stream(self.capture_stream):
            self._step(batch, keys)
        current.wait_stream(self.capture_stream)

    def _capture(self, batch: int, keys: int) -> torch.cuda.CUDAGraph:
        """The step of ``(batch, keys)`` recorded (not run) as a CUDA graph in the engine's pool.

        Every value that outlives the step is in the arena, allocated outside the pool, so graphs sharing the pool
        may replay in any order (tests/test_static_capture.py checks that the step leaves no tensor behind).
        "thread_local": CUDA work of other threads (another stage, a background thread) during the capture neither
        fails nor invalidates it."""
        previous_device = torch.cuda.current_device()
        current = torch.cuda.current_stream(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with cuda_capture_lock, torch.cuda.device(self.device):
                if self.graph_pool is None:
                    self.graph_pool = torch.cuda.graph_pool_handle()
                try:
                    with torch.cuda.graph(graph, pool=self.graph_pool, stream=self.capture_stream,
                                          capture_error_mode="thread_local"):
                        self._step(batch, keys)
                except BaseException:
                    _end_allocating_to_pool(self.device, self.graph_pool)
                    raise
        finally:
            # torch.cuda.graph leaves its capture stream current when ending the capture raises; setting a stream
            # also sets its device, so the caller's device is put back after it
            torch.cuda.set_stream(current)
            torch.cuda.set_device(previous_device)
        return graph

    def _drop_graphs(self) -> None:
        """Forget every graph, and their pool with them: the next capture starts a fresh pool (a pool whose graphs
        are all gone is not reused)."""
        self.graphs.clear()
        self.graph_pool = None

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            empty_cuda_cache()

    def _step(self, batch: int, keys: int) -> None:
        """Choose every running row's next token from the arena's logits, record it, and run it through the model
        (its keys and values into the cache, its logits into the arena). No host synchronisation."""
        arena, plan = self.arena, self.plan
        running = ~arena.done[:batch]
        step = arena.step[:batch]
        scores = arena.logits[:batch]
        if plan.min_new_tokens:
            scores = block_stop(scores, step < plan.min_new_tokens, self.stop_candidate)
        seen = arena.seen[:batch, : arena.candidates] if plan.repetition_penalty != 1.0 else None
        scores = process_logits(scores, plan.options(), seen=seen)
        uniforms = arena.uniforms[:batch].gather(1, step[:, None]).squeeze(1) if plan.do_sample else None
        chosen = choose(scores, plan.options(), uniforms)
        token = chosen if self.candidate_ids is None else self.candidate_ids[chosen]
        sink = torch.full_like(chosen, arena.candidates)
        arena.seen[:batch].scatter_(1, torch.where(running, chosen, sink)[:, None], True)
        arena.out[:batch].scatter_(1, torch.where(running, step, arena.steps)[:, None], token[:, None])
        finished = (token == self.stop_token) | (step + 1 >= arena.limit[:batch])
        arena.done[:batch] |= running & finished
        arena.fed[:batch] = torch.where(running, token, arena.fed[:batch])
        position = arena.position[:batch]
        arena.step[:batch] += running.long()
        # finished rows keep feeding their last token at a frozen position: harmless, their slot is ignored
        hidden = self.embed(arena.fed[:batch])[:, None, :]
        cos, sin = self.rotary(hidden, position[:, None])
        mask = (arena.key_index[:keys][None, :] <= position[:, None])[:, None, None, :]
        slots = torch.arange(batch, device=self.device)
        hidden = self._layers(hidden, cos, sin, mask, slots, position, keys)
        arena.logits[:batch] = self._logits(hidden[:, 0])
        arena.position[:batch] += running.long()

    def release(self) -> None:
        """Free the arena and the graphs (the next call allocates them again)."""
        with self.lock:
            self._drop_graphs()
            self.arena = None
            self._empty_cache()


def _end_allocating_to_pool(device: torch.device, pool) -> None:
    """After a failed capture, tell the caching allocator that the capture is over. Before PyTorch 2.12 a capture
    whose end fails skips this (pytorch#180395), and the allocator then believes a capture is under way for the
    rest of the process: ``empty_cache`` raises (before 2.8) or does nothing, and an allocation that runs out of
    memory no longer frees the cache first. A private call, hence best effort; the pool's memory stays reserved."""
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    if end is None:
        return
    try:
        end(device.index if device.index is not None else torch.cuda.current_device(), pool)
    except RuntimeError:
        pass  # no capture under way to this pool: PyTorch ended it, or it never began


def _round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


def _bucket_ceiling(rows: int, most: int | None = None) -> int:
    """The batch bucket serving ``rows`` rows: the next power of two, at most ``most``."""
    bucket = 1 << max(0, rows - 1).bit_length()
    return bucket if most is None else min(bucket, most)
