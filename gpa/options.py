"""Options of the three tasks: the generation settings (defaults equal the reference's) plus chunking and batching.

``dataclasses.asdict(options)`` is what batch jobs log as parameters. Plain dataclasses, free of torch: a job's
driver validates options without loading the model's libraries.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields

from .vocab import normalize_task

ENGINES = ("auto", "reference", "static")


@dataclass
class GenerationOptions:
    """Decoding settings. The class defaults are Hugging Face's; :meth:`for_task` gives the reference's."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    constrained: bool = False  # restrict outputs to the task's tokens (see TokenLayout.allowed_mask)
    min_new_tokens: int = 0  # <|im_end|> is blocked before this many new tokens (Hugging Face's min_new_tokens)
    # "reference": the transformers forward with a growing cache, one step at a time (exact reference numerics);
    # "static": a preallocated KV cache and CUDA graphs (see gpa.static_generation); "auto": static on CUDA.
    engine: str = "auto"

    @classmethod
    def for_task(cls, task: str, generation_config=None) -> GenerationOptions:
        """The reference's settings for ``task``.

        The reference calls ``model.generate`` with stt: greedy, 512 new tokens; tts/vc: sampling, temperature
        0.2, repetition penalty 1.2, 512 new tokens. Whatever it leaves unset (top-k, top-p, and for stt the
        repetition penalty) comes from the checkpoint's ``generation_config`` (a dict or a transformers
        ``GenerationConfig``) and otherwise from transformers' defaults (top-k 50, top-p 1.0, penalty 1.0).
        """
        task = normalize_task(task)

        def get(name, default):
            if generation_config is None:
                return default
            if isinstance(generation_config, Mapping):
                value = generation_config.get(name)
            else:
                value = getattr(generation_config, name, None)
            return default if value is None else value

        options = cls(
            max_new_tokens=512,
            top_k=int(get("top_k", 50)),
            top_p=float(get("top_p", 1.0)),
            repetition_penalty=float(get("repetition_penalty", 1.0)),
            temperature=float(get("temperature", 1.0)),
        )
        if task == "stt":
            options.do_sample = False
        else:
            options.do_sample = True
            options.temperature = 0.2
            options.repetition_penalty = 1.2
        return options

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be positive")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must lie between 0 and max_new_tokens")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.do_sample:
            if self.temperature <= 0:
                raise ValueError("temperature must be positive when sampling (use do_sample=False for greedy)")
            if self.top_k < 0:
                raise ValueError("top_k must be >= 0 (0 disables it)")
            if not 0 < self.top_p <= 1:
                raise ValueError("top_p must lie in (0, 1]")


_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool,), "None": (type(None),)}
# (option, bound, whether the bound itself is allowed) for the options that are not generation settings
_LOWER_BOUNDS = (("batch_size", 1, True), ("window_s", 0, False), ("crossfade_s", 0, True),
                 ("max_chunk_units", 1, True), ("max_text_chars", 1, True), ("max_new_tokens_per_second", 0, False),
                 ("max_new_tokens_per_unit", 0, False))


@dataclass
class _TaskOptions(GenerationOptions):
    # None: the checkpoint's generation_config.json decides, else transformers' default -- exactly what the
    # reference gets, since it never sets these itself.
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int = 0  # per-item seeds are derived from it unless given explicitly
    batch_size: int = 32  # windows/pieces per model call: bounds memory whatever the caller passes

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first option whose type or value is wrong (a batch job checks before it
        runs, instead of failing every row)."""
        for f in fields(self):
            value = getattr(self, f.name)
            parts = [part.strip() for part in str(f.type).split("|")]
            if all(part in _TYPES for part in parts):  # annotations of other kinds are not checked here
                allowed = tuple(t for part in parts for t in _TYPES[part])
                if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                    wanted = str(f.type).replace(" | None", " or None")
                    raise ValueError(f"option {f.name} must be {wanted}, got {value!r}")
            if isinstance(value, numbers.Real) and not math.isfinite(float(value)):  # numpy's float32 too
                raise ValueError(f"option {f.name} must be a finite number, got {value!r}")
        for name, low, inclusive in _LOWER_BOUNDS:
            value = getattr(self, name, None)
            if value is not None and (value < low if inclusive else value <= low):
                raise ValueError(f"option {name} must be {'at least' if inclusive else 'above'} {low}, got {value!r}")
        self.generation().validate()

    def generation(self, checkpoint_defaults: GenerationOptions | None = None) -> GenerationOptions:
        """The settings for :func:`gpa.generation.generate`, unset ones taken from ``checkpoint_defaults``
        (``GenerationOptions.for_task(task, model.generation_config)``)."""
        defaults = checkpoint_defaults or GenerationOptions()
        values = {f.name: getattr(self, f.name) for f in fields(GenerationOptions)}
        for name, value in values.items():
            if value is None:
                values[name] = getattr(defaults, name)
        return GenerationOptions(**values)


@dataclass
class TranscribeOptions(_TaskOptions):
    max_new_tokens: int = 512
    do_sample: bool = False
    window_s: float = 30.0  # longer audio is cut at pauses into windows of at most this length
    # at most this many new tokens per second of a window (a bound on runaway generations); None: max_new_tokens
    max_new_tokens_per_second: float | None = None


@dataclass
class SynthesizeOptions(_TaskOptions):
    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.2
    repetition_penalty: float | None = 1.2
    max_chunk_units: int = 150  # text per generation (~10 s of speech, see gpa.chunking.text_units)
    max_text_chars: int = 20_000  # longer text is an error, never silently cut
    max_new_tokens_per_unit: float | None = None  # at most this many new tokens per text unit of a piece
    crossfade_s: float = 0.05


@dataclass
class ConvertOptions(_TaskOptions):
    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.2
    repetition_penalty: float | None = 1.2
    window_s: float = 10.0  # 512 semantic tokens are 10.24 s: longer sources are converted window by window
    max_new_tokens_per_second: float | None = None  # as TranscribeOptions', per second of a source window
    crossfade_s: float = 0.05
