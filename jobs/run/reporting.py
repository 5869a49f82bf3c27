"""Reporting a run: its metrics file in the output, then its MLflow run (params, metrics, artifacts)."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import JobConfig
from jobs.io import schema as S
from jobs.io import storage
from jobs.io.manifest import InputRows
from jobs.io.output import OutputStore, read_parquet
from jobs.run.bookkeeping import JobResult
from jobs.run.errors import root_cause
from jobs.run.metrics import error_summary
from jobs.run.tracking import JobTracking
from jobs.tasks import get_task

log = logging.getLogger(__name__)


def report(config: JobConfig, inputs: InputRows, store: OutputStore, result: JobResult, params: dict,
            new_files: list[str], new_rows: pa.Table | None, tracking: JobTracking) -> None:
    """Metrics file first (always), then MLflow; a tracking failure is recorded, never raised."""
    model_source = _first(new_rows, "model_source") or storage.redact_uri(config.model)
    hashes = sorted({h for h in new_rows.column("model_hash").to_pylist() if h}) if new_rows is not None else []
    if len(hashes) > 1:  # the checkpoint was replaced at its source while the run went on: each row says which
        log.warning("this run's rows were made by %d versions of the checkpoint (replaced during the run); each "
                    "row's model_hash says which", len(hashes))
    model_hash = ",".join(hashes)
    values = job_params(config, inputs, model_source, model_hash, result.run_id, params)
    local = {"run_id": result.run_id, "job": config.job, "params": values, "metrics": result.metrics, "mlflow": None}
    storage.write_bytes(result.metrics_path, json.dumps(local, indent=1, default=str).encode())
    try:
        artifacts = _artifacts(config, new_files, new_rows)
    except Exception as exc:  # artifacts are a nicety: log the run without them rather than not at all
        log.warning("could not prepare MLflow artifacts: %s", storage.scrub(str(exc), 300))
        artifacts = {}
    result.tracking = tracking.finish(params=values, metrics=result.metrics, artifacts=artifacts,
                                      tags={"gpa_batch.model_hash": model_hash})
    t = result.tracking
    local["mlflow"] = {"uri": t.uri, "experiment": t.experiment, "run_id": t.run_id, "error": t.error}
    storage.write_bytes(result.metrics_path, json.dumps(local, indent=1, default=str).encode())


def track_failure(config: JobConfig, inputs: InputRows, run_id: str, params: dict, tracking: JobTracking,
                   exc: BaseException) -> None:
    """End the MLflow run as FAILED with the reason (only the first call does anything)."""
    values = job_params(config, inputs, storage.redact_uri(config.model), "", run_id, params)
    tracking.finish(params=values, metrics={}, artifacts={}, failure=root_cause(exc))


def job_params(config: JobConfig, inputs: InputRows, model_source: str, model_hash: str, run_id: str,
               options: dict) -> dict:
    """MLflow params: what determines the results, URIs without credentials."""
    params = {
        "job": config.job, "run_id": run_id, "model_source": storage.redact_uri(model_source),
        "model_hash": model_hash, "input": storage.redact_uri(config.input),
        "output": storage.redact_uri(config.output),
        "input_convention": inputs.convention, "glob": config.glob or "", "batch_size": config.batch_size,
        "encoder_batch_size": config.encoder_batch_size or "",
        "bucket_batches": config.bucket_batches, "actors_min": config.actors[0], "actors_max": config.actors[1],
        "gpus_per_actor": config.gpus_per_actor,
        "cpus_per_actor": config.cpus_per_actor, "retry_errors": config.retry_errors, "mode": config.mode,
        "seed": config.seed,
        "limit": config.limit if config.limit is not None else "", "audio_storage": config.audio_storage,
        "max_duration_s": config.max_duration_s, "encoder_precision": config.encoder_precision,
        "stages": config.stages,
    }
    params.update(get_task(config.job).job_params(config))
    params.update({f"options.{k}": v for k, v in options.items()})
    return params


def redacted_config(config: JobConfig) -> dict:
    values = config.to_dict()
    for key in ("input", "output", "model", "reference", "mlflow_uri", "cache_dir"):
        if values.get(key):
            values[key] = storage.redact_uri(values[key])
    values["actors"] = f"{config.actors[0]}:{config.actors[1]}"
    return values


def _artifacts(config: JobConfig, new_files: list[str], light: pa.Table | None) -> dict[str, bytes]:
    import yaml

    artifacts = {"config.yaml": yaml.safe_dump(redacted_config(config), sort_keys=False).encode(),
                 "errors.json": json.dumps(error_summary(light), indent=1).encode()}
    token_columns = [f.name for f in get_task(config.job).output_schema if f.type == S.TOKENS]
    samples, n = [], 0
    for uri in new_files:
        if n >= config.samples:
            break
        table = read_parquet(uri)
        for row in table.filter(pc.equal(table.column("status"), "ok")).slice(0, config.samples - n).to_pylist():
            n += 1
            flac = _sample_audio(row.pop("audio", None))
            if flac:
                name = storage.safe_name(row["id"], ".flac")
                artifacts[f"samples/{name}"] = flac
                row["audio_file"] = name
            for key in token_columns:  # a count instead of every id
                if row.get(key) is not None:
                    row[key] = f"{len(row[key])} tokens"
            samples.append(row)
    artifacts["samples/samples.json"] = json.dumps(samples, indent=1, default=str, ensure_ascii=False).encode()
    return artifacts


def _sample_audio(audio: dict | None) -> bytes | None:
    """A sample row's FLAC: inline bytes, or the object it was written to (``--audio-storage objects``)."""
    if not audio:
        return None
    if audio.get("bytes"):
        return audio["bytes"]
    if audio.get("path"):
        try:
            return storage.read_bytes(audio["path"])
        except Exception as exc:  # a sample is a convenience: the run's results are already committed
            log.warning("sample audio %s not logged: %s", storage.redact_uri(audio["path"]), type(exc).__name__)
    return None


def _first(table: pa.Table | None, column: str):
    if table is None:
        return None
    for value in table.column(column).to_pylist():
        if value:
            return value
    return None
