"""What every task is and shares: the :class:`Task` base class, the work-row columns and typed output rows.

A task module subclasses :class:`Task` and declares its name, the GPA training-manifest names it accepts, its
manifest fields, its options class, its work and output columns, its row logic, its metrics and its CLI flags;
:mod:`jobs.tasks` registers it. Everything else (reading, validation, the actor pool, retries, writing, resume,
tracking, the CLI subcommand) is derived from these declarations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from jobs.io import schema as S
from jobs.io.storage import redact_uri

# Work-row columns every task carries between the stages (the input fields, the row's state, its timings, the
# model that made it); a task adds its own result columns (``Task.work_fields``) and the waveforms come last.
WORK_COMMON = [
    *S.INPUT,
    pa.field("status", pa.string()), pa.field("error_kind", pa.string()), pa.field("error", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("t_start", pa.float64()), pa.field("decode_s", pa.float64()), pa.field("model_s", pa.float64()),
    pa.field("model_source", pa.string()), pa.field("model_hash", pa.string()),
]
# What the staged pipeline's stages hand on, per row (a row's input is cut into pieces: audio windows, text chunks)
PIECE_RANGE = pa.struct([("start", pa.int64()), ("end", pa.int64())])  # a window's samples in the row's audio
TOKEN_LISTS = pa.list_(S.TOKENS)  # one token list per piece
EMBEDDING = pa.list_(pa.float32())  # a BiCodec speaker embedding
WAV_COLUMNS = ("wav", "out_wav")  # the input waveform (decode -> model) and the output one (model -> encode)

_PCM_BYTES_PER_S = 2 * S.SAMPLE_RATE

# what a missing required manifest field is reported as
_MISSING = {
    "audio": ("missing_field", "no audio (field 'audio')"),
    "ref_audio": ("missing_field", "no reference audio (field 'ref_audio', or --reference for all rows)"),
    "text": ("invalid_text", "text is empty"),
}

log = logging.getLogger(__name__)


def output_row_type(name: str, schema: pa.Schema) -> type:
    """A dataclass with one field per column of ``schema`` (each defaulting to null): a misspelt column is a
    TypeError where the row is made, and an attribute that is not a column cannot be set (slots)."""
    return dataclasses.make_dataclass(name, [(f.name, Any, dataclasses.field(default=None)) for f in schema],
                                      slots=True, kw_only=True)


def mark_error(row: dict, error: Exception, prefix: str = "") -> None:
    """Turn a work row into an error row: its kind (``error.kind``, else model_error) and a scrubbed message."""
    from jobs.io.storage import scrub

    row["status"] = "error"
    row["error_kind"] = getattr(error, "kind", "model_error")
    row["error"] = scrub(f"{prefix}{error}" if str(error) else f"{prefix}{type(error).__name__}")


class Task:
    """One batch task. Subclasses set the class attributes and implement :meth:`run` and :meth:`output_fields`'
    values in :meth:`output_row`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for ``gpa-batch --help``
    example: ClassVar[str] = ""  # a command line for the subcommand's help
    manifest_names: ClassVar[tuple[str, ...]] = ()  # GPA training manifests' ``task`` values (input only)
    # manifest fields this task reads: field -> required; the other canonical fields are read when present
    manifest_fields: ClassVar[dict[str, bool]] = {}
    # input fields decoded by the CPU stage ("audio" -> the wav column). References are not: they repeat across
    # many rows, so each actor decodes and encodes every distinct reference once (jobs.tasks.speakers.SpeakerCache).
    audio_fields: ClassVar[tuple[str, ...]] = ()
    options_class: ClassVar[type] = object  # the task's options dataclass (gpa.TranscribeOptions, ...)
    job_settings: ClassVar[tuple[str, ...]] = ("batch_size", "seed")  # options the job sets from its own flags
    # JobConfig fields that only this task reads -> what they do, for the refusal a job of another task gives
    task_settings: ClassVar[dict[str, str]] = {}
    work_fields: ClassVar[list[pa.Field]] = []  # result columns the model stage fills in
    output_fields: ClassVar[list[pa.Field]] = []  # output columns after schema.COMMON
    # metrics: the output columns holding the audio seconds read and written, which of them the throughput and
    # RTFx count, and the column WER/CER are measured against (None: no WER)
    audio_in_column: ClassVar[str | None] = None
    audio_out_column: ClassVar[str | None] = None
    work_audio: ClassVar[str] = "in"
    reference_field: ClassVar[str | None] = None

    # --- declarations derived once -----------------------------------------------------------------------------

    @cached_property
    def output_schema(self) -> pa.Schema:
        return S.with_hf_features(pa.schema(S.COMMON + self.output_fields))

    @cached_property
    def row_type(self) -> type:
        """The typed output row (one field per output column)."""
        return output_row_type(f"{self.name.title()}Row", self.output_schema)

    def table(self, rows: list) -> pa.Table:
        """Typed output rows as a table of exactly :attr:`output_schema`."""
        names = self.output_schema.names
        return pa.Table.from_pydict({n: [getattr(r, n) for r in rows] for n in names}, schema=self.output_schema)

    def option_fields(self) -> dict[str, dataclasses.Field]:
        """The task options a user may set (the options dataclass's fields less the job's own settings)."""
        return {f.name: f for f in dataclasses.fields(self.options_class) if f.name not in self.job_settings}

    def option_keys(self) -> str:
        """The option keys with their types, as ``--option`` errors and help list them."""
        return ", ".join(f"{n} ({str(f.type).replace(' | None', ' or None')})" for n, f in self.option_fields().items())

    # --- manifest rows -----------------------------------------------------------------------------------------

    def validate(self, row: dict[str, Any], reference: str | None, max_text_chars: int) -> tuple[str, str] | None:
        """(error kind, reason) when the (already type-checked) row cannot be processed, else None."""
        for name, required in self.manifest_fields.items():
            if required and not row.get(name) and not (name == "ref_audio" and reference):
                return _MISSING.get(name, ("missing_field", f"no {name} (field {name!r})"))
        return None

    def id_from_row(self, row: dict[str, Any], audio: str | None, segment: str, ref: str) -> str | None:
        """The id of a row without one, from what it asks for (``audio`` and ``ref`` as written, redacted;
        ``segment`` its ``@begin-end``); None when it asks for too little to name it."""
        return f"{audio}{segment}" if audio else None

    # --- options -----------------------------------------------------------------------------------------------

    def options(self, config) -> Any:
        """The task options of ``config`` (its ``options`` plus the job's seed and batch size)."""
        for name in self.job_settings:
            if name in config.options:  # the job's own would silently win (batch_size sizes the windows too)
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} is a job setting: use {flag} (or {name}: at the top of a --config file)")
        unknown = sorted(set(config.options) - set(self.option_fields()))
        if unknown:
            raise ValueError(f"unknown option {', '.join(unknown)} for {self.name}; valid keys: {self.option_keys()}")
        given = {**config.options, "seed": config.seed}
        if config.batch_size is not None:  # else the options' own default (the job fills it in for_cluster)
            given["batch_size"] = config.batch_size
        options = self.options_class(**given)
        if "max_text_chars" in self.job_settings:
            options.max_text_chars = config.max_text_chars
        return options

    def job_params(self, config) -> dict[str, Any]:
        """The task's own job settings that change its rows: recorded as MLflow params (beside the shared ones)
        and in the output's identity (a rerun with others is refused, see jobs.run.resume)."""
        return {}

    # --- the command line --------------------------------------------------------------------------------------

    def add_arguments(self, group: argparse._ArgumentGroup, default) -> None:
        """Add this task's own flags to the subcommand's task group; ``default(name)`` is a JobConfig default as
        help text."""

    # --- rows ----------------------------------------------------------------------------------------------------

    def lengths(self, rows: pa.Table) -> np.ndarray:
        """Rough cost of each row before decoding (to sort rows into similar-length batches), in seconds: the audio
        segment's duration when known, else the manifest's duration hint, else the file's size as if it were 16 kHz
        16-bit PCM (formats differ, but files of one archive compare well by size), else 0."""
        def column(name: str) -> np.ndarray:
            return rows.column(name).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan

        segment = column("end_time") - column("begin_time")
        known = np.where(np.isnan(segment), column("duration_hint"), segment)
        return np.nan_to_num(np.where(np.isnan(known), column("size_bytes") / _PCM_BYTES_PER_S, known))

    # --- the staged pipeline: tokenize -> generate -> detokenize, token ids between (docs/architecture.md) -------

    tokenize_components: ClassVar[tuple[str, ...]] = ()  # the GPA components the tokenize stage loads

    def detokenize_components(self, quality: bool) -> tuple[str, ...]:
        """The GPA components the detokenize stage loads; none: the task has no such stage (its generate stage
        finishes the rows)."""
        return ()

    def tokenize(self, model, rows: list[dict], waves: dict[str, list], options, speakers, quality: bool) -> None:
        """Cut each live row's input into pieces and fill in their token ids (or the row's error)."""
        raise NotImplementedError

    def generate(self, model, rows: list[dict], options) -> None:
        """Fill in each live row's generated token ids (or its error)."""
        raise NotImplementedError

    def detokenize(self, model, rows: list[dict], options, quality: bool) -> list[np.ndarray | None]:
        """Finish each live row from its generated ids; return the output waveforms (or Nones)."""
        return [None] * len(rows)

    def run(self, model, rows: list[dict], waves: dict[str, list], options, speakers, quality: bool
            ) -> list[np.ndarray | None]:
        """All the stages in one process (``--stages fused``): fill each row's result fields (or its error) in
        place; return the output waveforms (or Nones)."""
        self.tokenize(model, rows, waves, options, speakers, quality)
        self.generate(model, rows, options)
        return self.detokenize(model, rows, options, quality)

    def output_row(self, row: dict, audio: dict | None, config, params: dict | None, model_info: dict):
        """The typed output row (:attr:`row_type`) of a finished work row; ``audio`` is its encoded
        ``{bytes, path}`` and ``params`` the task options as a dict (``dataclasses.asdict``)."""
        raise NotImplementedError

    def common(self, row: dict, params: dict | None, model_info: dict) -> dict[str, Any]:
        """The values of :data:`jobs.io.schema.COMMON` for a work row."""
        return {
            "id": row["id"], "status": row["status"], "error_kind": row.get("error_kind"), "error": row.get("error"),
            "model_source": model_info.get("source"), "model_hash": model_info.get("hash"),
            "params": _params(params, row.get("seed")) if params is not None else None, "seed": row.get("seed"),
            "duration_s": row.get("duration_s"), "run_id": model_info.get("run_id"),
            "input_version": row.get("input_version"),
        }


class VoiceTask(Task):
    """What synthesize and convert share: a reference voice per row (``ref_audio`` or ``--reference``), output
    audio, and quality measures that ``--no-quality`` turns off."""

    quality_checks: ClassVar[str] = "the quality measures"  # what --no-quality skips

    def job_params(self, config) -> dict[str, Any]:
        return {"quality": config.quality}

    def add_arguments(self, group, default) -> None:
        group.add_argument("--reference", metavar="URI",
                           help="reference voice for rows without ref_audio (default: none, each row names its own)")
        group.add_argument("--no-quality", dest="quality", action="store_false",
                           help=f"skip {self.quality_checks} (default: measured)")

    # --- the staged pipeline ----------------------------------------------------------------------------------
    piece_column: ClassVar[str] = ""  # the per-row list of pieces the generate stage works on

    def detokenize_components(self, quality: bool) -> tuple[str, ...]:
        return ("bicodec",)

    def tokenize_speakers(self, model, rows: list[dict], speakers) -> None:
        """Each live row's reference voice: its global tokens and speaker embedding (or the row's error)."""
        for row, speaker in zip(rows, speakers.resolve(model, rows), strict=True):
            if speaker is not None and row["status"] == "ok":
                row["global_tokens"] = [int(x) for x in speaker.global_tokens]
                row["speaker_embedding"] = [float(x) for x in np.asarray(speaker.embedding).reshape(-1)]

    def generate_pieces(self, model, rows: list[dict], batch: list[tuple[int, int]], options) -> list:
        """The GenerationOutput of each ``(row, piece)`` of ``batch``."""
        raise NotImplementedError

    def piece_size(self, rows: list[dict]):
        """A piece's size, to batch similar pieces together."""
        return lambda piece: len(rows[piece[0]][self.piece_column][piece[1]])

    def generate(self, model, rows, options):
        pieces = live_pieces(rows, self.piece_column)
        generations = run_pieces(lambda batch: self.generate_pieces(model, rows, batch, options), pieces, rows,
                                 options.batch_size, size=self.piece_size(rows))
        for (i, _), generation in zip(pieces, generations, strict=True):
            row = rows[i]
            if generation is None or row["status"] != "ok":
                continue
            row["piece_generated"] = [*(row.get("piece_generated") or []), list(generation.ids)]
            row["num_generated_tokens"] = (row.get("num_generated_tokens") or 0) + len(generation.ids)
            row["truncated"] = bool(row.get("truncated")) or generation.hit_max_new_tokens

    def detokenize(self, model, rows, options, quality):
        from gpa.chunking import join_speech
        from gpa.errors import EmptyGeneration

        pieces = live_pieces(rows, "piece_generated")

        def run(batch):
            return model.detokenize_speech([np.asarray(rows[i]["global_tokens"]) for i, _ in batch],
                                           [rows[i]["piece_generated"][k] for i, k in batch])

        speech = run_pieces(run, pieces, rows, options.batch_size,
                            size=lambda p: len(rows[p[0]]["piece_generated"][p[1]]))
        parts: dict[int, list] = {}
        for (i, k), out in zip(pieces, speech, strict=True):
            if out is None or rows[i]["status"] != "ok":
                continue
            semantic, wave = out
            if wave is None:
                count = len(rows[i]["piece_generated"][k])
                mark_error(rows[i], EmptyGeneration(f"the model generated no semantic tokens (piece {k + 1}, "
                                                    f"{count} tokens)"))
                continue
            parts.setdefault(i, []).append((semantic, wave))
        outputs: list[np.ndarray | None] = [None] * len(rows)
        for i, pieces_of_row in parts.items():
            if rows[i]["status"] == "ok":
                rows[i]["semantic_tokens"] = [int(t) for semantic, _ in pieces_of_row for t in semantic]
                outputs[i] = join_speech([w for _, w in pieces_of_row], S.SAMPLE_RATE, options.crossfade_s)
        ok = [i for i, out in enumerate(outputs) if out is not None]
        if quality:
            try:
                self.measure(model, rows, outputs, ok, options)
            except Exception as exc:  # quality is best effort: rows whose audio was made stay ok without it
                log.warning("quality measures failed for %d rows (%s)", len(ok), type(exc).__name__)
        return outputs

    def measure(self, model, rows: list[dict], outputs: list, ok: list[int], options) -> None:
        """The quality measures of the finished rows ``ok`` (``--no-quality`` skips them)."""


def live_pieces(rows: list[dict], column: str) -> list[tuple[int, int]]:
    """``(row index, piece index)`` of every piece of the rows still ok, from their per-piece list ``column``."""
    return [(i, k) for i, row in enumerate(rows) if row["status"] == "ok" for k in range(len(row.get(column) or []))]


def run_pieces(run, pieces: list[tuple[int, int]], rows: list[dict], batch_size: int, size=None) -> list:
    """``run(batch of pieces)`` in isolated batches (a failing piece fails alone); each failed piece's error becomes
    its row's. Returns one output per piece (None where it failed)."""
    from gpa.errors import GPAError
    from gpa.inference import isolated

    outputs = isolated(run, pieces, batch_size, size)
    for (i, _), out in zip(pieces, outputs, strict=True):
        if isinstance(out, GPAError) and rows[i]["status"] == "ok":
            mark_error(rows[i], out)
    return [None if isinstance(out, GPAError) else out for out in outputs]


def uri_of(row: dict, field: str) -> str | None:
    """A row's audio URI as an output column: without credentials."""
    return redact_uri(row[field]) if row.get(field) else None


def _params(params: dict, seed: int | None) -> str:
    return json.dumps({**params, "seed": seed}, sort_keys=True, default=str)


def short_hash(text: str) -> str:
    """A short, stable digest of ``text`` (ids derived from what a row asks for)."""
    import hashlib

    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
