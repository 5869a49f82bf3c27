"""Options of the three tasks: the generation settings (defaults equal the reference's) plus chunking and batching.

``dataclasses.asdict(options)`` is what batch jobs log as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .generation import GenerationOptions


@dataclass
class _TaskOptions(GenerationOptions):
    # None: the checkpoint's generation_config.json decides, else transformers' default -- exactly what the
    # reference gets, since it never sets these itself.
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int = 0  # per-item seeds are derived from it unless given explicitly
    batch_size: int = 32  # windows/pieces per model call: bounds memory whatever the caller passes

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


@dataclass
class SynthesizeOptions(_TaskOptions):
    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.2
    repetition_penalty: float | None = 1.2
    max_chunk_units: int = 150  # text per generation (~10 s of speech, see gpa.chunking.text_units)
    max_text_chars: int = 20_000  # longer text is an error, never silently cut
    crossfade_s: float = 0.05


@dataclass
class ConvertOptions(_TaskOptions):
    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.2
    repetition_penalty: float | None = 1.2
    window_s: float = 10.0  # 512 semantic tokens are 10.24 s: longer sources are converted window by window
    crossfade_s: float = 0.05
