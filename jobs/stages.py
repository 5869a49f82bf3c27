"""The stages of the job skeleton, each a plain function or class that Ray Data runs (and tests can call directly).

decode (CPU task) -> GPA (one actor pool, or with ``--stages split`` a pool each for tokenize, generate and
detokenize) -> encode (CPU task) -> write (staged Parquet part).

Rows travel as Arrow tables of :func:`jobs.tasks.work_schema`; waveforms are ``large_list<float32>`` columns so
no stage ever turns samples into Python objects. A row that fails at any stage keeps going with ``status="error"``
and is written like any other row: one output row per input row.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from jobs.config import JobConfig
from jobs.io import schema as S
from jobs.io import storage
from jobs.run.resume import check_actor_model
from jobs.tasks import WAV_COLUMNS, get_task, mark_error, work_schema
from jobs.tasks.speakers import SpeakerCache

log = logging.getLogger(__name__)


def work_table(rows: list[dict], waves: dict[str, list]) -> pa.Table:
    """Work rows (and their waveforms) as the Arrow table the next stage gets; a key that is not a work column (a
    misspelt one) is an error here, not a value silently dropped."""
    schema = work_schema()
    unknown = {key for row in rows for key in row} - set(schema.names)
    if unknown:
        raise KeyError(f"not work columns (jobs.tasks.work_schema): {', '.join(sorted(unknown))}")
    table = S.rows_to_table(rows, pa.schema([f for f in schema if f.name not in WAV_COLUMNS]))
    n = len(rows)
    for name in WAV_COLUMNS:
        table = table.append_column(pa.field(name, S.WAV), S.wav_array(waves.get(name) or [None] * n))
    return table.select(schema.names)


def split_table(table: pa.Table) -> tuple[list[dict], dict[str, list]]:
    names = [n for n in table.column_names if n not in WAV_COLUMNS]
    rows = table.select(names).to_pylist()
    waves = {n: S.wav_list(table.column(n)) if n in table.column_names else [None] * len(rows) for n in WAV_COLUMNS}
    return rows, waves


# --- decode ----------------------------------------------------------------------------------------------------


class _LastFile:
    """The last file this worker fetched for a segment: consecutive segments of one long recording (rows go in file
    order) fetch it once (see :class:`gpa.audio.EncodedAudio` for what each segment decodes)."""

    uri: str | None = None
    audio = None  # gpa.audio.EncodedAudio


def decode_batch(batch: pa.Table, job: str, max_duration_s: float, max_bytes: int | None = None) -> pa.Table:
    """Fetch and decode each row's audio to 16 kHz mono, cut its segment, measure its duration."""
    from gpa.audio import MAX_INPUT_BYTES, SAMPLE_RATE, EncodedAudio, load_audio, read_audio_file
    from gpa.errors import GPAError, TooLongAudio, UnreadableAudio

    max_bytes = MAX_INPUT_BYTES if max_bytes is None else max_bytes
    task = get_task(job)
    rows = batch.to_pylist()
    wavs: list[np.ndarray | None] = [None] * len(rows)
    for i, row in enumerate(rows):
        row.update(t_start=time.time(), status="ok", error_kind=None, error=None)
        start = time.perf_counter()
        if "audio" in task.audio_fields:
            try:
                begin, end = row.get("begin_time"), row.get("end_time")
                name = storage.redact_uri(row["audio"])
                if begin is not None and end is not None and end - begin > max_duration_s:  # before fetching
                    raise TooLongAudio.over_limit("the segment", end - begin, max_duration_s)
                if begin is None and end is None:
                    wav = load_audio(row["audio"], max_duration_s=max_duration_s, max_bytes=max_bytes)
                else:
                    if _LastFile.uri != row["audio"]:
                        _LastFile.uri, _LastFile.audio = None, None
                        _LastFile.audio = EncodedAudio(read_audio_file(row["audio"], max_bytes), name=name)
                        _LastFile.uri = row["audio"]
                    segment = _LastFile.audio.segment(begin, end, max_duration_s)
                    wav = load_audio(segment, max_duration_s=max_duration_s)
                row["duration_s"] = len(wav) / SAMPLE_RATE
                wavs[i] = wav
            except TooLongAudio as exc:
                row["duration_s"] = exc.duration_s
                mark_error(row, TooLongAudio(f"{exc} (--max-duration-s)", exc.duration_s))
            except GPAError as exc:
                mark_error(row, exc)
            except Exception as exc:  # anything else a decoder may throw is still this row's problem only
                mark_error(row, UnreadableAudio(f"{type(exc).__name__}: {exc}"))
        row["decode_s"] = time.perf_counter() - start
    return work_table(rows, {"wav": wavs})


# --- GPA -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelStage:
    """One actor pool of the model part of a job: which stage it runs (None: all of them) and what each of its
    actors asks of a node."""

    stage: str | None
    share: float  # of an actor's --gpus-per-actor, --cpus-per-actor and --memory-per-actor-mb

    def describe(self, config: JobConfig) -> str:
        gpus, cpus = config.gpus_per_actor * self.share, config.cpus_per_actor * self.share
        return f"{self.stage or 'model'} ({gpus:g} GPU, {cpus:g} CPU per actor)"


def model_stages(config: JobConfig) -> list[ModelStage]:
    """The model's actor pools: one running GPA whole (``--stages fused``), or tokenize, generate and (for tasks
    that make audio) detokenize, each with a share of an actor's resources, most of it for the LLM's decoding."""
    if config.stages == "fused":
        return [ModelStage(None, 1.0)]
    if get_task(config.job).detokenize_components(config.quality):
        return [ModelStage("tokenize", 0.25), ModelStage("generate", 0.5), ModelStage("detokenize", 0.25)]
    return [ModelStage("tokenize", 0.25), ModelStage("generate", 0.75)]


class GPAStage:
    """One model per actor, running one stage of the task (``tokenize``, ``generate`` or ``detokenize``, each
    loading only the GPA components it needs) or all of them (``stage=None``). Each call gets
    ``batch_size * bucket_batches`` rows, which GPA sorts by length and runs in batches of ``batch_size`` (similar
    lengths together: little padding)."""

    def __init__(self, config: JobConfig, options=None, stage: str | None = None, expected_model: str | None = None,
                 share: float = 1.0):
        import torch

        from gpa import GPA
        from gpa.model import COMPONENTS

        # run_job passes a config with these defaults filled in; anyone else gets them for this process's GPUs
        self.config = config.for_cluster(cluster_gpus=torch.cuda.device_count())
        self.task = get_task(self.config.job)
        self.stage = stage
        # the actor's share of --cpus-per-actor (split stages share it): more threads would oversubscribe the cores
        threads = self.config.torch_threads or max(1, int(round(self.config.cpus_per_actor * share)))
        torch.set_num_threads(threads)
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, self.config.model_dtype(device))
        components = {None: COMPONENTS, "tokenize": self.task.tokenize_components, "generate": ("llm",),
                      "detokenize": self.task.detokenize_components(self.config.quality)}[stage]
        self.model = GPA.from_pretrained(self.config.model, device=device, dtype=dtype, cache_dir=self.config.cache_dir,
                                         components=components, encoder_precision=self.config.encoder_precision)
        check_actor_model(expected_model, self.model.content_hash)  # before any row: see jobs.run.resume
        if self.config.encoder_batch_size:
            for name in {"glm", "bicodec"} & set(components):
                getattr(self.model, name).batch_size = self.config.encoder_batch_size
        # the driver's options (built and checked once), else this config's
        self.options = options if options is not None else self.task.options(self.config)
        self.speakers = SpeakerCache(max_duration_s=self.config.max_duration_s,
                                     max_bytes=self.config.max_input_bytes,
                                     batch_size=self.config.encoder_batch_size or 16)
        self.source = storage.redact_uri(str(self.model.source or self.config.model))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows, waves = split_table(batch)
        if self.config.debug_delay_s and self.stage in (None, "generate"):  # once per window, whatever the stages
            time.sleep(self.config.debug_delay_s)
        live = [i for i, r in enumerate(rows) if r["status"] == "ok"]
        outputs: list[np.ndarray | None] = [None] * len(rows)
        start = time.perf_counter()
        if live:
            results = self._run([rows[i] for i in live], {"wav": [waves["wav"][i] for i in live]})
            for i, out in zip(live, results, strict=True):
                outputs[i] = out
        per_row = (time.perf_counter() - start) / max(1, len(live))
        for i, row in enumerate(rows):
            row["model_source"], row["model_hash"] = self.source, self.model.content_hash
            if i in live:
                row["model_s"] = (row.get("model_s") or 0.0) + per_row  # summed over the stages
        if self.stage in ("tokenize", "generate"):  # token ids go on, not audio
            return work_table(rows, {})
        return work_table(rows, {"out_wav": outputs})

    def _work(self, rows: list[dict], waves: dict[str, list]) -> list:
        task, model, options, quality = self.task, self.model, self.options, self.config.quality
        if self.stage is None:
            return task.run(model, rows, waves, options, self.speakers, quality)
        if self.stage == "tokenize":
            task.tokenize(model, rows, waves, options, self.speakers, quality)
        elif self.stage == "generate":
            task.generate(model, rows, options)
        else:
            return task.detokenize(model, rows, options, quality)
        return [None] * len(rows)

    def _run(self, rows: list[dict], waves: dict[str, list]) -> list:
        snapshot = copy.deepcopy(rows)
        try:
            return self._work(rows, waves)
        except Exception as exc:  # the whole call failed (e.g. a crash outside GPA's per-item handling)
            log.warning("model call over %d rows failed (%s); retrying them one by one", len(rows), type(exc).__name__)
        outputs = []
        for k, original in enumerate(snapshot):
            row = copy.deepcopy(original)
            try:
                out = self._work([row], {n: [v[k]] for n, v in waves.items()})[0]
            except Exception as exc:
                mark_error(row, exc if hasattr(exc, "kind") else RuntimeError(f"{type(exc).__name__}: {exc}"))
                out = None
            rows[k].clear()
            rows[k].update(row)
            outputs.append(out)
        return outputs


# --- encode ----------------------------------------------------------------------------------------------------


def encode_batch(batch: pa.Table, config: JobConfig, run_id: str, params: dict, progress=None) -> pa.Table:
    """Finished work rows -> output rows: FLAC audio (inline or as objects), metrics, timings.

    ``params`` are the task options as a dict, made once by the driver (this CPU stage never imports torch);
    ``progress``: the driver's tally actor (:mod:`jobs.run.progress`), told of each finished window.
    """
    from gpa.audio import encode_flac

    task = get_task(config.job)
    rows, waves = split_table(batch)
    out_rows = []
    for row, wave in zip(rows, waves["out_wav"], strict=True):
        start = time.perf_counter()
        audio = None
        model_info = {"run_id": run_id, "source": row.get("model_source"), "hash": row.get("model_hash")}
        try:
            if wave is not None and row["status"] == "ok":
                flac = encode_flac(wave)
                row["out_duration_s"] = len(wave) / S.SAMPLE_RATE
                name = storage.safe_name(row["id"], ".flac")
                if config.audio_storage == "objects":
                    uri = storage.join(storage.normalize(config.output), "audio", name[:2], name)
                    _write_audio_object(uri, flac, name)
                    audio = {"bytes": None, "path": uri}
                else:
                    audio = {"bytes": flac, "path": name}
            out = task.output_row(row, audio, config, params, model_info)
        except Exception as exc:
            mark_error(row, exc if hasattr(exc, "kind") else _encode_error(exc))
            out = task.output_row(row, None, config, params, model_info)
        end = time.time()
        out.timings = {"decode_s": row.get("decode_s"), "model_s": row.get("model_s"),
                       "encode_s": time.perf_counter() - start,
                       "latency_s": end - row["t_start"] if row.get("t_start") else None, "finished_at": end}
        out_rows.append(out)
    table = task.table(out_rows)
    if progress is not None:
        from jobs.run.progress import window_counts

        progress.add.remote(window_counts(config.job, table))  # not waited for
    return table


def _write_audio_object(uri: str, flac: bytes, name: str) -> None:
    try:
        storage.write_bytes(uri, flac)
    except Exception as exc:
        if storage.is_transient(exc):  # an outage is not this row's fault: a plain rerun redoes the row
            raise storage.StorageUnavailable(f"{name}: storage unavailable while writing its audio "
                                             f"({type(exc).__name__}); try again later") from None
        raise


def _encode_error(exc: Exception) -> Exception:
    error = RuntimeError(f"{type(exc).__name__}: {exc}")
    error.kind = "encode_error"  # type: ignore[attr-defined]
    return error


# --- write -----------------------------------------------------------------------------------------------------


def make_sink(output: str, run_id: str, rows_per_part: int | None):
    """A Ray Data datasink writing each write task's rows as one staged part (see :mod:`jobs.io.output`)."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    from jobs.io.output import OutputStore

    class StagedParquetSink(Datasink):
        def __init__(self):
            self.output, self.run_id, self.rows = output, run_id, rows_per_part

        @property
        def min_rows_per_write(self):
            return self.rows

        def write(self, blocks, ctx):
            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return None
            table = pa.concat_tables(tables)
            store = OutputStore(self.output)
            if not store.is_current(self.run_id):  # this run was killed and another one owns the output now
                log.warning("run %s no longer owns %s; part not written", self.run_id, store.uri)
                return None
            # the task index names the part, so a retried write task overwrites its own earlier attempt
            name = f"part-{self.run_id}-{ctx.task_idx:05d}.parquet"
            return store.stage(self.run_id, name, table)

    return StagedParquetSink()
