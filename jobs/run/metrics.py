"""Aggregate metrics of a run, computed from the rows it wrote (what MLflow and the summary report)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from jobs.tasks import get_task
from jobs.tasks.quality import normalize_text

# the columns the metrics read (the task's audio and reference columns besides)
METRIC_COLUMNS = ("id", "status", "error_kind", "error", "duration_s", "timings", "wer", "cer",
                  "speaker_similarity", "keep")


def run_metrics(job: str, table: pa.Table | None, wall_s: float) -> dict[str, float]:
    """Rows ok/error (by kind), audio hours in/out, throughput, RTFx, latency p50/p95, WER/CER, quality pass rate.

    - throughput: audio seconds (the task's ``work_audio``: in for transcribe/convert, out for synthesize) per
      wall-clock second of the run;
    - RTFx: the same audio seconds per second of model time (summed over actors), i.e. speed per actor;
    - latency: per row, from the start of its decode to the end of its encode.
    """
    m: dict[str, float] = {"wall_s": wall_s}
    if table is None or table.num_rows == 0:
        m.update(rows=0, rows_ok=0, rows_error=0)
        return m
    task = get_task(job)
    wanted = {*METRIC_COLUMNS, task.audio_in_column, task.audio_out_column, task.reference_field} - {None}
    rows = table.select([c for c in table.column_names if c in wanted]).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    m["rows"] = len(rows)
    m["rows_ok"] = len(ok)
    m["rows_error"] = len(rows) - len(ok)
    for kind, n in Counter(r["error_kind"] for r in rows if r["status"] != "ok").items():
        m[f"rows_error.{kind}"] = n
    seconds_in = sum(r.get(task.audio_in_column) or 0.0 for r in ok) if task.audio_in_column else 0.0
    seconds_out = sum(r.get(task.audio_out_column) or 0.0 for r in ok) if task.audio_out_column else 0.0
    work_s = seconds_in if task.work_audio == "in" else seconds_out
    m["audio_hours_in"] = seconds_in / 3600
    m["audio_hours_out"] = seconds_out / 3600
    m["rows_per_s"] = len(rows) / wall_s if wall_s > 0 else 0.0
    m["throughput_audio_s_per_s"] = work_s / wall_s if wall_s > 0 else 0.0
    model_s = sum((r["timings"] or {}).get("model_s") or 0.0 for r in rows)
    if model_s > 0:
        m["rtfx"] = work_s / model_s
    latencies = [r["timings"]["latency_s"] for r in rows if r["timings"] and r["timings"].get("latency_s") is not None]
    if latencies:
        m["latency_p50_s"] = float(np.percentile(latencies, 50))
        m["latency_p95_s"] = float(np.percentile(latencies, 95))
    for name in ("wer", "cer", "speaker_similarity"):
        values = [r[name] for r in ok if r.get(name) is not None]
        if values:
            m[f"{name}_mean"] = float(np.mean(values))
            m[f"{name}_rows"] = len(values)
    m.update(corpus_error_rates(ok, task.reference_field))
    if "keep" in table.column_names and ok:
        m["quality_pass_rate"] = sum(1 for r in ok if r.get("keep")) / len(ok)
    return m


def corpus_error_rates(rows: list[dict], reference_field: str | None) -> dict[str, float]:
    """``wer_corpus`` and ``cer_corpus``: all the rows' edits over all their reference words (characters), the
    usual corpus figure, where ``wer_mean`` weighs a two-word clip like a long one. A row's edits are its rate
    times its reference's length, as jiwer counts it (after :func:`jobs.tasks.quality.normalize_text`)."""
    out = {}
    for name, length in (("wer", lambda ref: len(ref.split())), ("cer", len)):
        weighted = [(r[name], length(normalize_text(r.get(reference_field) or "")))
                    for r in rows if reference_field and r.get(name) is not None]
        total = sum(n for _, n in weighted)
        if total:
            out[f"{name}_corpus"] = sum(rate * n for rate, n in weighted) / total
    return out


def error_summary(table: pa.Table | None, examples: int = 20) -> dict:
    """Counts by kind and the first few error rows of each kind (id and message)."""
    if table is None:
        return {"errors": 0, "by_kind": {}, "examples": {}}
    rows = table.select(["id", "status", "error_kind", "error"]).to_pylist()
    errors = [r for r in rows if r["status"] != "ok"]
    by_kind = Counter(r["error_kind"] for r in errors)
    shown: dict[str, list] = {}
    for r in errors:
        bucket = shown.setdefault(r["error_kind"], [])
        if len(bucket) < examples:
            bucket.append({"id": r["id"][:300], "error": r["error"]})
    return {"errors": len(errors), "by_kind": dict(by_kind), "examples": shown}
