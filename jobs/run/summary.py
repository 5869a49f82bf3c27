"""What a finished job prints: where the results are and counts a user can check against the input."""

from __future__ import annotations

from jobs.io import storage
from jobs.run.bookkeeping import JobResult


def summary_dict(result: JobResult) -> dict:
    tracking = result.tracking
    return {
        "job": result.job, "run_id": result.run_id, "input": result.input, "output": storage.redact_uri(result.output),
        "input_rows": result.input_rows, "convention": result.extra.get("convention"),
        "skipped_other_task": result.skipped_other_task,
        "already_done": result.already_done, "processed": result.processed, "counts": result.counts,
        "committed_rows": result.committed_rows, "committed": result.committed,
        "rows_not_in_input": result.extra.get("rows_not_in_input", 0), "complete": result.complete,
        "files": [storage.redact_uri(f) for f in result.files], "metrics_path": storage.redact_uri(result.metrics_path),
        "metrics": result.metrics, "wall_s": round(result.wall_s, 2),
        "mlflow": None if tracking is None else {"uri": tracking.uri, "experiment": tracking.experiment,
                                                 "run_id": tracking.run_id, "error": tracking.error},
    }


def format_summary(result: JobResult) -> str:
    c = result.counts
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()) if k not in ("ok", "error"))
    lines = [
        f"gpa-batch {result.job}  run {result.run_id}  ({result.wall_s:.1f} s)",
        f"  input           {result.input}  ({result.extra.get('convention')} convention)",
        f"  input rows      {result.input_rows}"
        + (f"  (+{result.skipped_other_task} rows of other tasks, left out: --skip-other-tasks)"
           if result.skipped_other_task else ""),
        f"  this run        {result.processed} rows: {c.get('ok', 0)} ok, {c.get('error', 0)} error"
        + (f" ({kinds})" if kinds else "")
        + (f"; {result.already_done} already done" if result.already_done else ""),
        f"  output          {storage.redact_uri(result.output)}",
        f"  output rows     {result.committed_rows}: {result.committed.get('ok', 0)} ok, "
        f"{result.committed.get('error', 0)} error; "
        + (f"{result.extra['rows_not_in_input']} of ids not in this input (from an earlier one); "
           if result.extra.get("rows_not_in_input") else "")
        + ("complete" if result.complete else _incomplete(result.extra)),
        f"  parquet         {storage.redact_uri(storage.join(result.output, 'data'))}/*.parquet  "
        f"(committed list: _gpa_batch/commit.json)",
    ]
    m = result.metrics
    if m.get("rows_per_s"):
        perf = f"  throughput      {m['rows_per_s']:.2f} rows/s, {m.get('throughput_audio_s_per_s', 0):.2f} audio-s/s"
        if "rtfx" in m:  # audio seconds per second of model time (per actor); the audio-s/s above is per wall second
            perf += f", RTFx {m['rtfx']:.1f}"
        if "latency_p50_s" in m:
            perf += f", latency p50 {m['latency_p50_s']:.2f} s p95 {m['latency_p95_s']:.2f} s"
        lines.append(perf)
    quality = [f"{k[:3].upper()} {m[k]:.3f}" for k in ("wer_corpus", "cer_corpus") if k in m]
    if "speaker_similarity_mean" in m:
        quality.append(f"speaker similarity {m['speaker_similarity_mean']:.3f}")
    if "quality_pass_rate" in m:
        quality.append(f"keep {m['quality_pass_rate']:.0%}")
    if quality:
        lines.append("  quality         " + ", ".join(quality))
    t = result.tracking
    if t is not None and t.error is None:
        lines.append(f"  mlflow          {t.uri}  experiment {t.experiment!r} run {t.run_id}")
        if t.uri.startswith("sqlite:"):
            lines.append(f"                  (browse: mlflow ui --backend-store-uri {t.uri})")
        elif t.uri.endswith("/_mlflow/mlflow.db"):
            lines.append("                  (browse: copy it here, then mlflow ui --backend-store-uri sqlite:///mlflow.db)")
    elif t is not None:
        lines.append(f"  mlflow          FAILED ({t.error}); metrics kept in the file below")
    lines.append(f"  metrics         {storage.redact_uri(result.metrics_path)}")
    return "\n".join(lines)


def _incomplete(extra: dict) -> str:
    parts = []
    if extra.get("pending_after_limit"):
        parts.append(f"{extra['pending_after_limit']} rows pending (--limit)")
    if extra.get("storage_unavailable"):
        parts.append(f"{extra['storage_unavailable']} rows could not be read (storage unavailable)")
    return "INCOMPLETE: " + ("; ".join(parts) or "rows pending") + "; rerun the same command to finish"
