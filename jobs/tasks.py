"""The three tasks as small plug-ins of the one job skeleton (:mod:`jobs.pipeline`).

A task says which input fields are audio to decode, how long a row is (to bucket batches), how to call GPA on a
batch of rows, and how to turn a finished row into an output row. Everything else (reading, validation, the
actor pool, retries, writing, resume, tracking) is shared.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schema as S
from .storage import redact_uri

# Columns carried between the stages (one schema for all tasks: unused columns stay null).
WORK_SCHEMA = pa.schema([
    *S.INPUT,
    ("status", pa.string()), ("error_kind", pa.string()), ("error", pa.string()),
    ("duration_s", pa.float64()),
    ("t_start", pa.float64()), ("decode_s", pa.float64()), ("model_s", pa.float64()),
    ("out_text", pa.string()), ("segments", pa.list_(S.SEGMENT)),
    ("num_glm_tokens", pa.int32()), ("num_semantic_tokens", pa.int32()), ("num_generated_tokens", pa.int32()),
    ("truncated", pa.bool_()),
    ("global_tokens", S.TOKENS), ("source_semantic_tokens", S.TOKENS), ("semantic_tokens", S.TOKENS),
    ("glm_tokens", S.TOKENS),
    ("asr_text", pa.string()), ("speaker_similarity", pa.float64()), ("source_similarity", pa.float64()),
    ("model_source", pa.string()), ("model_hash", pa.string()),
    ("wav", S.WAV), ("out_wav", S.WAV),
])
WAV_COLUMNS = ("wav", "out_wav")


def row_seed(job_seed: int, row_id: str, explicit: int | None) -> int:
    """A row's seed: its own, else derived from the job seed and its id, so a row's output never depends on
    which batch it lands in, in which order, or in which run."""
    if explicit is not None:
        return int(explicit)
    digest = int(hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:12], 16)
    return (int(job_seed) * 1_000_003 + digest) % (2**31 - 1)


_PCM_BYTES_PER_S = 2 * 16000


class Task:
    name = ""
    # input fields decoded by the CPU stage ("audio" -> the wav column). References are not: they repeat across
    # many rows, so each actor decodes and encodes every distinct reference once (SpeakerCache).
    audio_fields: tuple[str, ...] = ()
    options_class = ""  # name of the task's options dataclass in gpa
    job_settings: tuple[str, ...] = ("batch_size", "seed")  # options the job sets from its own flags

    def options(self, config) -> Any:
        import gpa

        for name in self.job_settings:
            if name in config.options:  # the job's own would silently win (batch_size sizes the windows too)
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} is a job setting: use {flag} (or {name}: at the top of a --config file)")
        given = {**config.options, "seed": config.seed}
        if config.batch_size is not None:  # else the options' own default (the job fills it in for_cluster)
            given["batch_size"] = config.batch_size
        return getattr(gpa, self.options_class)(**given)

    def lengths(self, rows: pa.Table) -> np.ndarray:
        """Rough cost of each row before decoding (to sort rows into similar-length batches), in seconds: the audio
        segment's duration when known, else the manifest's duration hint, else the file's size as if it were 16 kHz
        16-bit PCM (formats differ, but files of one archive compare well by size), else 0."""
        def column(name: str) -> np.ndarray:
            return rows.column(name).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan

        segment = column("end_time") - column("begin_time")
        known = np.where(np.isnan(segment), column("duration_hint"), segment)
        return np.nan_to_num(np.where(np.isnan(known), column("size_bytes") / _PCM_BYTES_PER_S, known))

    def run(self, model, rows: list[dict], waves: dict[str, list], options, speakers: SpeakerCache,
            quality: bool) -> list[np.ndarray | None]:
        """Fill each row's result fields (or its error) in place; return the output waveforms (or Nones)."""
        raise NotImplementedError

    def output_row(self, row: dict, audio: dict | None, config, params: dict | None, model_info: dict) -> dict:
        """The output row (``schema()``) of a finished work row; ``audio`` is its encoded ``{bytes, path}`` and
        ``params`` the task options as a dict (``dataclasses.asdict``)."""
        raise NotImplementedError

    def schema(self) -> pa.Schema:
        return S.output_schema(self.name)


def _params(params: dict, seed: int | None) -> str:
    return json.dumps({**params, "seed": seed}, sort_keys=True, default=str)


def _error(row: dict, error: Exception, prefix: str = "") -> None:
    from .storage import scrub

    row["status"] = "error"
    row["error_kind"] = getattr(error, "kind", "model_error")
    row["error"] = scrub(f"{prefix}{error}" if str(error) else f"{prefix}{type(error).__name__}")


def _common(row: dict, config, params: dict | None, model_info: dict) -> dict:
    return {
        "id": row["id"], "status": row["status"], "error_kind": row.get("error_kind"), "error": row.get("error"),
        "model_source": model_info.get("source"), "model_hash": model_info.get("hash"),
        "params": _params(params, row.get("seed")) if params is not None else None, "seed": row.get("seed"),
        "duration_s": row.get("duration_s"), "run_id": model_info.get("run_id"),
        "input_version": row.get("input_version"),
    }


class TranscribeTask(Task):
    name = "transcribe"
    audio_fields = ("audio",)
    options_class = "TranscribeOptions"

    def run(self, model, rows, waves, options, speakers, quality):
        results = model.transcribe([(w, S.SAMPLE_RATE) for w in waves["wav"]], options)
        for row, result in zip(rows, results, strict=True):
            if not result.ok:
                _error(row, result.error)
                continue
            offset = row.get("begin_time") or 0.0  # segment times are in the source file's timeline
            row.update(
                out_text=result.text,
                segments=[{"start": s.start + offset, "end": s.end + offset, "text": s.text} for s in result.segments],
                num_glm_tokens=len(result.glm_tokens), num_semantic_tokens=len(result.semantic_tokens),
                num_generated_tokens=len(result.generated_ids), truncated=bool(result.truncated),
                # a few bytes per second of audio beside its samples; output_row keeps them with --keep-tokens
                glm_tokens=list(map(int, result.glm_tokens)), semantic_tokens=list(map(int, result.semantic_tokens)),
            )
        return [None] * len(rows)

    def output_row(self, row, audio, config, params, model_info):
        out = _common(row, config, params, model_info)
        reference = row.get("text")
        out.update(
            audio_uri=redact_uri(row["audio"]) if row.get("audio") else None,
            begin_time=row.get("begin_time"), end_time=row.get("end_time"),
            text=row.get("out_text"), segments=row.get("segments"),
            num_glm_tokens=row.get("num_glm_tokens"), num_semantic_tokens=row.get("num_semantic_tokens"),
            num_generated_tokens=row.get("num_generated_tokens"), truncated=row.get("truncated"),
            reference=reference,
        )
        if config.keep_tokens:
            out.update(glm_tokens=row.get("glm_tokens"), semantic_tokens=row.get("semantic_tokens"))
        if row["status"] == "ok" and reference:
            out["wer"], out["cer"] = error_rates(reference, row.get("out_text") or "")
        return out


class SynthesizeTask(Task):
    name = "synthesize"
    audio_fields = ("ref_audio",)

    options_class = "SynthesizeOptions"
    job_settings = (*Task.job_settings, "max_text_chars")

    def options(self, config):
        options = super().options(config)
        options.max_text_chars = config.max_text_chars
        return options

    def lengths(self, rows):
        return pc.fill_null(pc.utf8_length(rows.column("text")), 0).to_numpy().astype(np.float64)

    def run(self, model, rows, waves, options, speakers, quality):
        outputs, refs, ok = _voice_cloning(model, rows, speakers, lambda todo, refs: model.synthesize(
            [rows[i]["text"] for i in todo], refs, options, seeds=[rows[i]["seed"] for i in todo]))
        if quality:
            _round_trip(model, [rows[i] for i in ok], [outputs[i] for i in ok], options.batch_size)
            _similarity(model, [rows[i] for i in ok], [outputs[i] for i in ok], "speaker_similarity",
                        [refs[i].embedding for i in ok])
        return outputs

    def output_row(self, row, audio, config, params, model_info):
        out = _common(row, config, params, model_info)
        ok = row["status"] == "ok"
        out.update(
            text=row.get("text"), ref_id=row.get("ref_id"),
            ref_audio_uri=redact_uri(row["ref_audio"]) if row.get("ref_audio") else None,
            audio=audio, sampling_rate=S.SAMPLE_RATE if ok else None, duration_s=row.get("out_duration_s"),
            global_tokens=row.get("global_tokens"), semantic_tokens=row.get("semantic_tokens"),
            num_generated_tokens=row.get("num_generated_tokens"), truncated=row.get("truncated"),
            asr_text=row.get("asr_text"), speaker_similarity=row.get("speaker_similarity"),
        )
        if ok and row.get("asr_text") is not None:
            out["wer"], out["cer"] = error_rates(row.get("text") or "", row["asr_text"])
        out["keep"] = ok and _passes(out, config)
        return out


class ConvertTask(Task):
    name = "convert"
    audio_fields = ("audio",)
    options_class = "ConvertOptions"

    def run(self, model, rows, waves, options, speakers, quality):
        outputs, refs, ok = _voice_cloning(model, rows, speakers, lambda todo, refs: model.convert(
            [(waves["wav"][i], S.SAMPLE_RATE) for i in todo], refs, options, seeds=[rows[i]["seed"] for i in todo]))
        if quality:
            _similarity(model, [rows[i] for i in ok], [outputs[i] for i in ok], "speaker_similarity",
                        [refs[i].embedding for i in ok])
            _similarity(model, [rows[i] for i in ok], [outputs[i] for i in ok], "source_similarity",
                        None, sources=[waves["wav"][i] for i in ok])
        return outputs

    def output_row(self, row, audio, config, params, model_info):
        out = _common(row, config, params, model_info)
        ok = row["status"] == "ok"
        source_duration = row.get("duration_s")
        out.update(
            source_id=row.get("source_id"),
            source_audio_uri=redact_uri(row["audio"]) if row.get("audio") else None,
            begin_time=row.get("begin_time"), end_time=row.get("end_time"),
            ref_id=row.get("ref_id"), ref_audio_uri=redact_uri(row["ref_audio"]) if row.get("ref_audio") else None,
            audio=audio, sampling_rate=S.SAMPLE_RATE if ok else None, source_duration_s=source_duration,
            duration_s=row.get("out_duration_s"),
            global_tokens=row.get("global_tokens"), source_semantic_tokens=row.get("source_semantic_tokens"),
            semantic_tokens=row.get("semantic_tokens"), num_generated_tokens=row.get("num_generated_tokens"),
            truncated=row.get("truncated"), speaker_similarity=row.get("speaker_similarity"),
            source_similarity=row.get("source_similarity"),
        )
        return out


TASKS: dict[str, Task] = {t.name: t for t in (TranscribeTask(), SynthesizeTask(), ConvertTask())}


# --- model-side helpers ----------------------------------------------------------------------------------------


def _voice_cloning(model, rows: list[dict], speakers: SpeakerCache, generate) -> tuple[list, list, list[int]]:
    """What synthesize and convert share: resolve each row's reference speaker, call ``generate(indices, speakers)``
    for the rows that have one, and copy the results (tokens, counts, or the error) into the rows.

    Returns the output waveforms (None where there is none), every row's speaker and the indices of the ok rows.
    """
    refs = speakers.resolve(model, rows)
    todo = [i for i, r in enumerate(refs) if r is not None]
    outputs: list[np.ndarray | None] = [None] * len(rows)
    if not todo:
        return outputs, refs, []
    results = generate(todo, [refs[i] for i in todo])
    for i, result in zip(todo, results, strict=True):
        row = rows[i]
        if not result.ok:
            _error(row, result.error)
            continue
        outputs[i] = np.asarray(result.audio, dtype=np.float32)
        row.update(global_tokens=list(map(int, result.global_tokens)),
                   semantic_tokens=list(map(int, result.semantic_tokens)),
                   num_generated_tokens=len(result.generated_ids), truncated=bool(result.truncated))
        source = getattr(result, "source_semantic_tokens", None)  # conversion only
        if source is not None:
            row["source_semantic_tokens"] = list(map(int, source))
    return outputs, refs, [i for i in todo if rows[i]["status"] == "ok"]


class SpeakerCache:
    """Speakers (global tokens + embedding) per reference, computed once per actor and reused across batches:
    a TTS corpus typically has thousands of rows per reference voice."""

    def __init__(self, capacity: int = 4096, max_duration_s: float | None = None, max_bytes: int | None = None):
        self.capacity = capacity
        # a reference is decoded whole: the same guards as the job's audio
        self.max_duration_s = max_duration_s
        self.max_bytes = max_bytes
        self._cache: dict[str, Any] = {}

    def resolve(self, model, rows: list[dict], field: str = "ref_audio") -> list:
        """The speaker of each live row's reference (None and an error row when it cannot be had)."""
        from gpa.audio import load_audio
        from gpa.errors import GPAError, UnreadableAudio

        failed: dict[str, Exception] = {}  # failures are remembered for this call only (they may be transient)
        speakers = []
        for row in rows:
            if row["status"] != "ok":
                speakers.append(None)
                continue
            key = row[field]
            if key not in self._cache and key not in failed:
                try:
                    # an outage is retried next run
                    samples = load_audio(key, max_duration_s=self.max_duration_s, max_bytes=self.max_bytes)
                    self._cache[key] = model.speaker((samples, S.SAMPLE_RATE))
                except GPAError as exc:
                    failed[key] = exc
                except Exception as exc:
                    failed[key] = UnreadableAudio(f"{type(exc).__name__}: {exc}")
                if len(self._cache) > self.capacity:
                    self._cache.pop(next(iter(self._cache)))
            if key in failed:
                _error(row, failed[key], prefix="reference audio: ")
                speakers.append(None)
            else:
                speakers.append(self._cache[key])
        return speakers


def _round_trip(model, rows: list[dict], audios: list[np.ndarray], batch_size: int) -> None:
    """GPA's own ASR on the synthesized audio (the quality gate's intelligibility check)."""
    if not rows:
        return
    from gpa import TranscribeOptions

    # enough tokens for the text that was asked for (a random or broken model must not run to 512 every time)
    budget = min(512, 16 + 2 * max(len(r.get("text") or "") for r in rows))
    options = TranscribeOptions(batch_size=batch_size, max_new_tokens=budget)
    results = model.transcribe([(a, S.SAMPLE_RATE) for a in audios], options)
    for row, result in zip(rows, results, strict=True):
        row["asr_text"] = result.text if result.ok else None


def _similarity(model, rows, audios, column: str, reference_embeddings=None, sources=None) -> None:
    """Cosine similarity of BiCodec speaker embeddings: output vs reference (or vs source)."""
    if not rows:
        return
    from gpa.errors import GPAError

    try:
        outs = model.speaker_embeddings([(a, S.SAMPLE_RATE) for a in audios])
        refs = (np.stack([np.asarray(e, np.float32).reshape(-1) for e in reference_embeddings])
                if reference_embeddings is not None
                else model.speaker_embeddings([(s, S.SAMPLE_RATE) for s in sources]))
    except GPAError:
        return  # quality is best effort: a row is not failed because its quality cannot be measured
    for row, a, b in zip(rows, outs, refs, strict=True):
        row[column] = cosine(a, b)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else 0.0


def _passes(out: dict, config) -> bool:
    """The synthesize quality gate: intelligible (CER) and in the reference's voice (similarity)."""
    if not config.quality:
        return True
    cer, sim = out.get("cer"), out.get("speaker_similarity")
    return cer is not None and sim is not None and cer <= config.keep_max_cer and sim >= config.keep_min_similarity


# --- text metrics ----------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, single spaces: WER/CER measure words, not formatting."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def error_rates(reference: str, hypothesis: str) -> tuple[float | None, float | None]:
    """(WER, CER) of ``hypothesis`` against ``reference`` after :func:`normalize_text`; None without a reference."""
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return None, None
    if not hyp:
        return 1.0, 1.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))
