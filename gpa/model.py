"""The GPA front: one checkpoint, three batch tasks (transcribe, synthesize, convert) and the components.

Batch methods never raise for a problem with one item: every result carries its own ``error``, and a failure of a
whole model call is retried item by item so that one bad input cannot take its batch mates down.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import prompts
from .audio import SAMPLE_RATE, AudioInput, load_audio
from .bicodec import BiCodec, load_config
from .bicodec.model import CONFIG_FILE as BICODEC_CONFIG
from .checkpoint import resolve_checkpoint
from .checkpoint_files import content_hash
from .chunking import clean_text, join_speech, join_texts, split_audio, split_text, text_units
from .errors import EmptyGeneration, GPAError, InvalidText, TooShortAudio
from .generation import GenerationOutput, generate
from .glm_tokenizer import GLMSpeechTokenizer, GLMTokenizerConfig
from .inference import Precision, check_precision, isolated
from .llm import load_llm, load_tokenizer
from .options import ConvertOptions, GenerationOptions, SynthesizeOptions, TranscribeOptions
from .profiling import stage
from .results import Conversion, Segment, Speaker, SpeechTokens, Synthesis, Transcription
from .storage import redact_uri
from .vocab import TokenLayout

COMPONENTS = ("glm", "bicodec", "llm")
GLM_DIR = "glm-4-voice-tokenizer"
BICODEC_DIR = "BiCodec"
MIN_SAMPLES = 1600  # 0.1 s: below this neither tokenizer yields a usable token


@dataclass
class _Piece:
    """A window of one item's input, processed as its own model call."""

    item: int
    index: int  # position of the window within its item
    start: int = 0  # sample range in the item's audio
    end: int = 0
    audio: np.ndarray | None = None
    text: str = ""

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


class GPA:
    def __init__(
        self,
        llm: torch.nn.Module,
        tokenizer,
        layout: TokenLayout,
        glm: GLMSpeechTokenizer,
        bicodec: BiCodec,
        *,
        source: str = "",
        content_hash: str = "",
        device: torch.device | None = None,
    ):
        self.llm, self.tokenizer, self.layout = llm, tokenizer, layout
        self.glm, self.bicodec = glm, bicodec
        self.source, self.content_hash = source, content_hash
        self._device = device
        config = None if isinstance(llm, _Missing) else getattr(llm, "generation_config", None)
        self.checkpoint_generation = {t: GenerationOptions.for_task(t, config) for t in ("stt", "tts", "vc")}

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: str | os.PathLike | None = None,
        trust_remote_code: bool = False,
        encoder_precision: Precision = "float32",
        components: Collection[str] = COMPONENTS,
    ) -> GPA:
        """Load a checkpoint in the official layout from a directory, an ``s3://`` prefix or a Hugging Face id.

        ``components`` loads only some of the models (the tokenizer and the token layout always): a process that
        runs one stage needs only that stage's (tokenize: ``glm`` and ``bicodec``; generate: ``llm``; detokenize:
        ``bicodec`` for speech, none for text). Using a component that was not loaded raises a clear error.

        ``dtype`` applies to the LLM and the GLM tokenizer's weights (float32 by default; bfloat16 is the usual choice
        on a GPU). BiCodec's weights stay float32. ``encoder_precision="bfloat16"`` runs the GLM tokenizer, wav2vec2
        and BiCodec's encoders under bf16 autocast (CUDA only); float32, the default, is exact. The quantizers
        pick nearest codes in float32 either way, but from rounded features, so tokens can differ: measure the
        agreement (benchmarks/encoder_agreement.py) before relying on it.
        """
        unknown = set(components) - set(COMPONENTS)
        if unknown or not components:
            raise ValueError(f"components must be some of {', '.join(COMPONENTS)}, got {sorted(components)}")
        device = torch.device(device)
        check_precision(encoder_precision, device)
        directory = resolve_checkpoint(source, cache_dir)
        dtype = dtype or torch.float32
        # hashing reads every file again (seconds for the full-size checkpoint): overlap it with building the models
        digest = _in_background(content_hash, directory)
        try:
            glm = bicodec = llm = None
            if "glm" in components:
                glm = GLMSpeechTokenizer.from_pretrained(directory / GLM_DIR, device=device, dtype=dtype,
                                                         precision=encoder_precision)
            if "bicodec" in components:
                bicodec = BiCodec.from_pretrained(directory / BICODEC_DIR, device=device, dtype=torch.float32,
                                                  precision=encoder_precision)
            if "llm" in components:
                llm, tokenizer = load_llm(directory, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
            else:
                tokenizer = load_tokenizer(directory, trust_remote_code=trust_remote_code)
            # the token layout needs every codebook's size: read from the configs (some parts are not loaded)
            bicodec_config = load_config(directory / BICODEC_DIR / BICODEC_CONFIG)
            layout = TokenLayout.from_tokenizer(
                tokenizer,
                glm_codebook_size=GLMTokenizerConfig.from_dir(directory / GLM_DIR).quantize_vocab_size,
                global_codebook_size=math.prod(bicodec_config.speaker_encoder.fsq_levels),
                semantic_codebook_size=bicodec_config.quantizer.codebook_size,
            )
            missing = {name: _Missing(name, components) for name in COMPONENTS if name not in components}
            return cls(llm or missing["llm"], tokenizer, layout, glm or missing["glm"], bicodec or missing["bicodec"],
                       source=redact_uri(os.fspath(source)), content_hash=digest.result(), device=device)
        except BaseException:
            digest.cancel()
            raise

    @classmethod
    def from_parts(cls, llm, tokenizer, glm: GLMSpeechTokenizer, bicodec: BiCodec, *,
                   source: str | os.PathLike = "", content_hash: str = "") -> GPA:
        """A GPA over components loaded separately (``from_pretrained`` loads them one after the other: transformers
        changes process-wide state while it builds a model, torch's default dtype among it, so loads in threads
        could build another component's buffers in the wrong dtype)."""
        layout = TokenLayout.from_tokenizer(
            tokenizer,
            glm_codebook_size=glm.codebook_size,
            global_codebook_size=bicodec.global_codebook_size,
            semantic_codebook_size=bicodec.semantic_codebook_size,
        )
        return cls(llm, tokenizer, layout, glm, bicodec, source=redact_uri(os.fspath(source)),
                   content_hash=content_hash)

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = next(self.llm.parameters()).device
        return self._device

    # --- components -----------------------------------------------------------------------------------------

    def load(self, audio: AudioInput) -> np.ndarray:
        """16 kHz mono float32 samples of ``audio``, long enough for both tokenizers."""
        with stage("audio decode"):
            samples = load_audio(audio, sample_rate=SAMPLE_RATE)
        if len(samples) < MIN_SAMPLES:
            raise TooShortAudio(
                f"audio is {len(samples) / SAMPLE_RATE:.3f} s; at least {MIN_SAMPLES / SAMPLE_RATE} s needed"
            )
        return samples

    def glm_tokens(self, audios: Sequence[AudioInput]) -> list[np.ndarray]:
        return self.glm.tokenize([self.load(a) for a in audios])

    def bicodec_tokens(self, audios: Sequence[AudioInput]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(global_tokens, semantic_tokens)`` per audio."""
        return self.bicodec.tokenize([self.load(a) for a in audios])

    def decode(self, global_tokens: Sequence[np.ndarray], semantic_tokens: Sequence[np.ndarray]) -> list[np.ndarray]:
        """BiCodec waveforms (16 kHz float32) for (global, semantic) token pairs, exactly as the model outputs them."""
        return self.bicodec.decode(list(global_tokens), list(semantic_tokens))

    def speaker(self, audio: AudioInput) -> Speaker:
        return self.speakers([audio])[0]

    def speakers(self, audios: Sequence[AudioInput]) -> list[Speaker]:
        samples = [self.load(a) for a in audios]
        with stage("speaker encode"):
            globals_, embeddings = self.bicodec.speakers(samples)
        return [Speaker(np.asarray(g), np.asarray(e)) for g, e in zip(globals_, embeddings, strict=True)]

    def speaker_embeddings(self, audios: Sequence[AudioInput]) -> np.ndarray:
        return np.asarray(self.bicodec.speaker_embedding([self.load(a) for a in audios]), dtype=np.float32)

    def stt_prompt_ids(self, audio: AudioInput) -> list[int]:
        samples = self.load(audio)
        glm = self.glm.tokenize([samples])[0]
        semantic = self.bicodec.semantic_tokens([samples])[0]
        return prompts.stt_prompt(self.layout, glm, semantic)

    def tts_prompt_ids(self, text: str, reference: AudioInput | Speaker) -> list[int]:
        speaker = reference if isinstance(reference, Speaker) else self.speaker(reference)
        return prompts.tts_prompt(self.layout, self.tokenizer, speaker.global_tokens, text).ids

    def vc_prompt_ids(self, source: AudioInput, reference: AudioInput | Speaker) -> list[int]:
        speaker = reference if isinstance(reference, Speaker) else self.speaker(reference)
        semantic = self.bicodec.semantic_tokens([self.load(source)])[0]
        return prompts.vc_prompt(self.layout, speaker.global_tokens, semantic)

    # --- tasks ------------------------------------------------------------------------------------------------

    def transcribe(self, audios: Sequence[AudioInput], options: TranscribeOptions | None = None) -> list[Transcription]:
        """Text of each audio. Audio longer than ``options.window_s`` is cut at pauses, the windows are transcribed
        as one batch and stitched, with a segment per window."""
        options = options or TranscribeOptions()
        results = [Transcription() for _ in audios]
        pieces: list[_Piece] = []
        for i, audio in enumerate(audios):
            try:
                samples = self.load(audio)
            except GPAError as exc:
                results[i].error = exc
                continue
            results[i].duration_s = len(samples) / SAMPLE_RATE
            windows = self.transcription_windows(samples, options)
            pieces += [_Piece(i, k, start, end, samples[start:end]) for k, (start, end) in enumerate(windows)]

        tokens = isolated(lambda batch: self.tokenize_speech([p.audio for p in batch]), pieces, options.batch_size,
                          _size)

        def generate_batch(batch: list[int]) -> list[GenerationOutput]:
            return self.generate_transcription([tokens[k] for k in batch], options,
                                               seconds=[pieces[k].seconds for k in batch])

        generations = _after(tokens, generate_batch, options.batch_size, lambda k: _size(pieces[k]))
        texts = _after(generations, lambda batch: self.detokenize_text([generations[k].ids for k in batch]),
                       options.batch_size, lambda k: _size(pieces[k]))
        outputs = [x if isinstance(x, GPAError) else (t, g, x) for t, g, x in zip(tokens, generations, texts,
                                                                                   strict=True)]
        for piece, result, (speech, generation, text) in _successful(results, pieces, outputs):
            result.glm_tokens += [int(x) for x in speech.glm]
            result.semantic_tokens += [int(x) for x in speech.semantic]
            result.generated_ids += generation.ids
            result.truncated |= generation.hit_max_new_tokens
            result.segments.append(Segment(piece.start / SAMPLE_RATE, piece.end / SAMPLE_RATE, text))
        for result in results:
            if result.error is None:
                result.text = join_texts([s.text for s in result.segments])
        return results

    def synthesize(
        self,
        texts: Sequence[str],
        references: Sequence[AudioInput | Speaker],
        options: SynthesizeOptions | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Synthesis]:
        """Speech for each text in the voice of its reference. Text too long for one generation is split at
        sentence boundaries and the audio pieces are joined with a short crossfade."""
        options = options or SynthesizeOptions()
        if len(references) != len(texts):
            raise ValueError("synthesize needs one reference per text")
        seeds = _item_seeds(seeds, len(texts), options.seed)
        results = [Synthesis(text=t if isinstance(t, str) else "") for t in texts]
        speakers = self._resolve_speakers(references, results)
        pieces: list[_Piece] = []
        for i, text in enumerate(texts):
            if results[i].error is not None:
                continue
            try:
                chunks = self.synthesis_chunks(text, options)
            except InvalidText as exc:
                results[i].error = exc
                continue
            results[i].global_tokens = [int(x) for x in speakers[i].global_tokens]
            results[i].chunks = len(chunks)
            pieces += [_Piece(i, k, text=chunk) for k, chunk in enumerate(chunks)]

        def generate_batch(batch: list[_Piece]) -> list[GenerationOutput]:
            return self.generate_synthesis([p.text for p in batch], [speakers[p.item] for p in batch], options,
                                           seeds=[piece_seed(seeds[p.item], p.index) for p in batch])

        generations = isolated(generate_batch, pieces, options.batch_size, _size)
        speech = self._detokenize_pieces(pieces, speakers, generations, options.batch_size)
        self._assemble_audio(results, pieces, generations, speech, options.crossfade_s)
        return results

    def convert(
        self,
        sources: Sequence[AudioInput],
        references: Sequence[AudioInput | Speaker],
        options: ConvertOptions | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Conversion]:
        """Each source's speech in the voice of its reference. Sources longer than ``options.window_s`` are converted
        window by window (cut at pauses) and joined with a short crossfade."""
        options = options or ConvertOptions()
        if len(references) != len(sources):
            raise ValueError("convert needs one reference per source")
        seeds = _item_seeds(seeds, len(sources), options.seed)
        results = [Conversion() for _ in sources]
        speakers = self._resolve_speakers(references, results)
        pieces: list[_Piece] = []
        for i, source in enumerate(sources):
            if results[i].error is not None:
                continue
            try:
                samples = self.load(source)
            except GPAError as exc:
                results[i].error = exc
                continue
            results[i].global_tokens = [int(x) for x in speakers[i].global_tokens]
            windows = self.conversion_windows(samples, options)
            results[i].chunks = len(windows)
            pieces += [_Piece(i, k, start, end, samples[start:end]) for k, (start, end) in enumerate(windows)]

        semantic = isolated(lambda batch: self.tokenize_source([p.audio for p in batch]), pieces, options.batch_size,
                            _size)
        def generate_batch(batch: list[int]) -> list[GenerationOutput]:
            return self.generate_conversion(
                [semantic[k] for k in batch], [speakers[pieces[k].item] for k in batch], options,
                seeds=[piece_seed(seeds[pieces[k].item], pieces[k].index) for k in batch],
                seconds=[pieces[k].seconds for k in batch])

        generations = _after(semantic, generate_batch, options.batch_size, lambda k: _size(pieces[k]))
        speech = self._detokenize_pieces(pieces, speakers, generations, options.batch_size)
        for piece, source, output in zip(pieces, semantic, speech, strict=True):
            if not isinstance(output, GPAError):
                results[piece.item].source_semantic_tokens += [int(x) for x in source]
        self._assemble_audio(results, pieces, generations, speech, options.crossfade_s)
        return results

    # --- stages -----------------------------------------------------------------------------------------------
    # Each task is tokenize -> generate -> detokenize with token ids in between, so that a batch job can run the
    # stages in processes (and device shares) of their own; the task methods above compose them in one process.
    # A model family whose encoder yields continuous features returns those from its tokenize stage and prefills
    # them as embeddings (the static engine's prefill takes embeddings).

    def transcription_windows(self, samples: np.ndarray, options: TranscribeOptions) -> list[tuple[int, int]]:
        """Where transcription cuts 16 kHz ``samples`` (sample ranges): at pauses, on GLM token boundaries, at most
        ``options.window_s`` and the GLM encoder's positional table (30 s) long, none too short to tokenize."""
        hop = self.glm.samples_per_token
        window_s = min(options.window_s, self.glm.max_samples / SAMPLE_RATE)
        return _lengthen_short_tail(split_audio(samples, SAMPLE_RATE, window_s, align=hop), MIN_SAMPLES, hop)

    def conversion_windows(self, samples: np.ndarray, options: ConvertOptions) -> list[tuple[int, int]]:
        """Where conversion cuts 16 kHz source ``samples``: at pauses, on semantic token boundaries, at most
        ``options.window_s`` long, none too short to tokenize."""
        hop = self.bicodec.samples_per_semantic_token
        return _lengthen_short_tail(split_audio(samples, SAMPLE_RATE, options.window_s, align=hop), MIN_SAMPLES, hop)

    def synthesis_chunks(self, text: str, options: SynthesizeOptions) -> list[str]:
        """The pieces synthesis generates ``text`` in: cleaned and split at sentence boundaries into at most
        ``options.max_chunk_units`` units each. Raises :class:`InvalidText` for text with nothing to say."""
        return split_text(clean_text(text, options.max_text_chars), options.max_chunk_units)

    def tokenize_speech(self, windows: Sequence[np.ndarray]) -> list[SpeechTokens]:
        """Transcription's tokenize stage: GLM-4-Voice (12.5 Hz) and BiCodec semantic (50 Hz) tokens of 16 kHz
        windows (at most the GLM encoder's 30 s each)."""
        windows = list(windows)
        with stage("GLM encode"):
            glm = self.glm.tokenize(windows)
        with stage("BiCodec encode"):
            semantic = self.bicodec.semantic_tokens(windows)
        return [SpeechTokens(g, s) for g, s in zip(glm, semantic, strict=True)]

    def tokenize_source(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Conversion's tokenize stage: BiCodec semantic tokens of 16 kHz windows of the source speech. (The
        reference voice's stage is :meth:`speakers`.)"""
        with stage("BiCodec encode"):
            return self.bicodec.semantic_tokens(list(windows))

    def generate_transcription(self, tokens: Sequence[SpeechTokens], options: TranscribeOptions, *,
                               seconds: Sequence[float] | None = None) -> list[GenerationOutput]:
        """Transcription's generate stage: the text tokens the LLM writes for each window's speech tokens.
        ``seconds``: each window's duration, which ``options.max_new_tokens_per_second`` limits its tokens by."""
        prompt_ids = [prompts.stt_prompt(self.layout, t.glm, t.semantic) for t in tokens]
        limits = self._token_limits(options, "stt", seconds, options.max_new_tokens_per_second)
        return self._generate(prompt_ids, "stt", options, [options.seed] * len(prompt_ids), limits)

    def generate_synthesis(self, texts: Sequence[str], speakers: Sequence[Speaker], options: SynthesizeOptions, *,
                           seeds: Sequence[int]) -> list[GenerationOutput]:
        """Synthesis's generate stage: the semantic tokens the LLM writes for each text chunk
        (:meth:`synthesis_chunks`) in its speaker's voice. Raises :class:`InvalidText` when a text does not fit
        the prompt."""
        prompt_ids = []
        for text, speaker in zip(texts, speakers, strict=True):
            prompt = prompts.tts_prompt(self.layout, self.tokenizer, speaker.global_tokens, text)
            if prompt.truncated:
                raise InvalidText("text piece longer than the prompt limit")
            prompt_ids.append(prompt.ids)
        limits = self._token_limits(options, "tts", [text_units(t) for t in texts], options.max_new_tokens_per_unit)
        return self._generate(prompt_ids, "tts", options, seeds, limits)

    def generate_conversion(self, semantic: Sequence[np.ndarray], speakers: Sequence[Speaker],
                            options: ConvertOptions, *, seeds: Sequence[int],
                            seconds: Sequence[float] | None = None) -> list[GenerationOutput]:
        """Conversion's generate stage: the semantic tokens the LLM writes for each source window's semantic tokens
        in its speaker's voice. ``seconds``: each window's duration (``options.max_new_tokens_per_second``)."""
        prompt_ids = [prompts.vc_prompt(self.layout, speaker.global_tokens, s)
                      for s, speaker in zip(semantic, speakers, strict=True)]
        limits = self._token_limits(options, "vc", seconds, options.max_new_tokens_per_second)
        return self._generate(prompt_ids, "vc", options, seeds, limits)

    def detokenize_text(self, generated_ids: Sequence[Sequence[int]]) -> list[str]:
        """Transcription's detokenize stage: the text of each generation (its ``GenerationOutput.ids``)."""
        return [prompts.text_from_generation(self.tokenizer, self.layout, list(ids)) for ids in generated_ids]

    def detokenize_speech(self, global_tokens: Sequence[np.ndarray], generated_ids: Sequence[Sequence[int]]
                          ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Synthesis's and conversion's detokenize stage: the semantic tokens of each generation (its
        ``GenerationOutput.ids``) and BiCodec's waveform of them in the voice of its global tokens (None when the
        generation holds no semantic token)."""
        semantic = [prompts.semantic_from_generation(self.layout, list(ids)) for ids in generated_ids]
        decodable = [i for i, s in enumerate(semantic) if len(s)]
        waves: list[np.ndarray | None] = [None] * len(semantic)
        if decodable:
            with stage("detokenize"):
                decoded = self.bicodec.decode([global_tokens[i] for i in decodable], [semantic[i] for i in decodable])
            for i, wave in zip(decodable, decoded, strict=True):
                waves[i] = wave
        return list(zip(semantic, waves, strict=True))

    # --- shared machinery -------------------------------------------------------------------------------------

    def _resolve_speakers(self, references, results) -> list[Speaker | None]:
        """One :class:`Speaker` per item; identical references are encoded once."""
        keys = [_reference_key(r) for r in references]
        unique = {k: r for k, r in zip(keys, references, strict=True) if not isinstance(r, Speaker)}
        unique_keys = list(unique)
        encoded = isolated(lambda batch: self.speakers([unique[k] for k in batch]), unique_keys, 16)
        by_key = dict(zip(unique_keys, encoded, strict=True))
        speakers: list[Speaker | None] = []
        for i, (key, ref) in enumerate(zip(keys, references, strict=True)):
            speaker = ref if isinstance(ref, Speaker) else by_key[key]
            if isinstance(speaker, GPAError):
                results[i].error = type(speaker)(f"reference audio: {speaker}")
                speakers.append(None)
            else:
                speakers.append(speaker)
        return speakers

    def _generate(self, prompt_ids, task: str, options, seeds, max_new_tokens) -> list[GenerationOutput]:
        return generate(
            self.llm,
            prompt_ids,
            options.generation(self.checkpoint_generation[task]),
            layout=self.layout,
            task=task,
            seeds=seeds,
            pad_id=self.layout.pad_id,
            max_new_tokens=max_new_tokens,
        )

    def _token_limits(self, options, task: str, sizes: Sequence[float] | None,
                      per_input: float | None) -> list[int] | None:
        """Each input's limit of new tokens: ``per_input`` per unit of its size (seconds of audio, units of text),
        at most the generation's ``max_new_tokens``."""
        if per_input is None or sizes is None:
            return None
        most = options.generation(self.checkpoint_generation[task]).max_new_tokens
        return [max(1, min(most, math.ceil(per_input * size))) for size in sizes]

    def _detokenize_pieces(self, pieces: list[_Piece], speakers, generations: list, batch_size: int) -> list:
        def run(batch: list[int]) -> list:
            return self.detokenize_speech([speakers[pieces[k].item].global_tokens for k in batch],
                                          [generations[k].ids for k in batch])

        return _after(generations, run, batch_size, lambda k: _size(pieces[k]))

    def _assemble_audio(self, results, pieces, generations, speech, crossfade_s: float) -> None:
        waves: dict[int, list[tuple[int, np.ndarray]]] = {}
        outputs = [s if isinstance(s, GPAError) else (g, *s) for g, s in zip(generations, speech, strict=True)]
        for piece, result, (generation, semantic, wave) in _successful(results, pieces, outputs):
            result.generated_ids += generation.ids
            result.truncated |= generation.hit_max_new_tokens
            if wave is None:
                result.error = EmptyGeneration(
                    f"the model generated no semantic tokens (piece {piece.index + 1}, {len(generation.ids)} tokens)"
                )
                continue
            result.semantic_tokens += [int(x) for x in semantic]
            waves.setdefault(piece.item, []).append((piece.index, wave))
        for item, parts in waves.items():
            result = results[item]
            if result.error is not None:
                continue
            result.audio = join_speech([w for _, w in sorted(parts, key=lambda p: p[0])], SAMPLE_RATE, crossfade_s)


class _Missing:
    """Stands in for a component that ``GPA.from_pretrained(components=...)`` did not load."""

    def __init__(self, name: str, loaded: Collection[str]):
        self._name, self._loaded = name, tuple(loaded)

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):  # copy, pickle and hasattr ask for these: plain absence
            raise AttributeError(attribute)
        raise RuntimeError(f"this GPA was loaded without its {self._name} (components={self._loaded}): "
                           f"load it with {self._name!r} among the components to use {attribute}")

    def __bool__(self) -> bool:
        return False


def _lengthen_short_tail(ranges: list[tuple[int, int]], min_samples: int, align: int) -> list[tuple[int, int]]:
    """Move the last cut back so that the final window is long enough to tokenize (windows never grow)."""
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] < min_samples:
        (start, cut), (_, end) = ranges[-2], ranges[-1]
        cut = (end - min_samples) // align * align
        return [*ranges[:-2], (start, cut), (cut, end)]
    return ranges


def _successful(results, pieces, outputs):
    """``(piece, its item's result, output)`` for every piece whose item has not failed; a failed piece's error
    becomes its item's error (the item's other pieces are then skipped)."""
    for piece, output in zip(pieces, outputs, strict=True):
        result = results[piece.item]
        if result.error is not None:
            continue
        if isinstance(output, GPAError):
            result.error = output
            continue
        yield piece, result, output


def _item_seeds(seeds: Sequence[int] | None, n: int, default: int) -> list[int]:
    if seeds is None:
        return [default] * n
    if len(seeds) != n:
        raise ValueError("one seed per item is needed")
    return [int(s) for s in seeds]


def _in_background(fn: Callable, *args) -> Future:
    """``fn(*args)`` in a daemon thread: a process whose load failed exits without waiting for it."""
    future: Future = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    threading.Thread(target=run, name="gpa-background", daemon=True).start()
    return future


def piece_seed(seed: int, index: int) -> int:
    """The seed of an item's ``index``-th piece (text chunk or audio window) from the item's seed."""
    return (seed * 1_000_003 + index) % (2**63)


def _reference_key(reference) -> object:
    if isinstance(reference, (str, Path, os.PathLike)):
        return ("path", os.fspath(reference))
    if isinstance(reference, (bytes, bytearray)):
        import hashlib

        return ("bytes", hashlib.sha1(reference).hexdigest())
    return ("object", id(reference))


def _after(previous: list, run: Callable[[list[int]], list], batch_size: int, size: Callable[[int], int]) -> list:
    """The next stage: ``run`` over the indices whose ``previous`` output is not an error (in isolated batches);
    earlier errors pass through."""
    live = [k for k, out in enumerate(previous) if not isinstance(out, GPAError)]
    outputs = list(previous)
    for k, out in zip(live, isolated(run, live, batch_size, size), strict=True):
        outputs[k] = out
    return outputs


def _size(item) -> int:
    if isinstance(item, _Piece):
        return len(item.audio) if item.audio is not None else len(item.text)
    return 0


__all__ = ["GPA", "GenerationOptions", "clean_text"]
