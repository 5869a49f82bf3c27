"""Run bookkeeping: checking what a run staged against what it planned, and the result it reports."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from jobs.io import storage
from jobs.io.output import OutputStore, count_ids, read_parquet
from jobs.run.errors import JobError
from jobs.run.metrics import run_metrics
from jobs.run.tracking import Tracking

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    job: str
    run_id: str
    input: str  # redacted
    output: str
    input_rows: int
    skipped_other_task: int
    already_done: int
    processed: int
    counts: dict[str, int]  # ok / error / error kinds, over the rows of this run
    committed_rows: int
    committed: dict[str, int]  # ok / error / error kinds over every committed row of the output
    complete: bool
    files: list[str]
    metrics: dict[str, float]
    metrics_path: str
    tracking: Tracking | None = None
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)


def verified_records(store: OutputStore, run_id: str, expected: Counter,
                      columns: list[str]) -> tuple[list[dict], int, pa.Table | None]:
    """The run's staged parts, once they are checked to hold exactly one row per pending input row; how many of
    those rows failed for a transient reason (the store was unreachable); and the rows' ``columns`` (for the
    run's metrics: each part is read once)."""
    if not store.is_current(run_id):
        raise JobError("another run took this output over (--takeover) while this one was running; nothing was "
                       "committed (the other run adopts this run's finished parts)")
    records = [r for r in store.staged_records() if r["run_id"] == run_id]
    written: Counter = Counter()
    unavailable = 0
    parts = []
    for record in records:
        part = read_parquet(storage.join(store.run_dir(run_id), record["part"]), columns)
        written += count_ids(part)
        unavailable += sum(k in storage.TRANSIENT_KINDS for k in part.column("error_kind").to_pylist())
        parts.append(part)
    if written != expected:
        missing, extra = sum((expected - written).values()), sum((written - expected).values())
        store.finish_run(run_id)
        raise JobError(f"the run wrote an inconsistent row set ({missing} rows missing, {extra} extra); "
                       "nothing was committed, rerun the same command")
    return records, unavailable, pa.concat_tables(parts) if parts else None


def run_result(config, inputs, plan, store, commit, run_id, wall_s, new_rows: pa.Table | None) -> JobResult:
    metrics = run_metrics(config.job, new_rows, wall_s)
    metrics.update(input_rows=inputs.total, already_done=plan.already_done, committed_rows=commit.rows)
    if inputs.skipped_other_task:
        metrics["skipped_other_task"] = inputs.skipped_other_task
    counts = {"ok": int(metrics.get("rows_ok", 0)), "error": int(metrics.get("rows_error", 0)),
              **{k.split(".", 1)[1]: int(v) for k, v in metrics.items() if k.startswith("rows_error.")}}
    index = store.index()
    # rows an earlier input had and this one lacks stay in the output (a manifest edited between runs): say so, as
    # the output then holds more rows than this input
    input_ids = pa.array(inputs.table.column("id").to_pylist() + [e["id"] for e in inputs.errors], pa.string())
    not_in_input = index.num_rows - (pc.sum(pc.is_in(index.column("id"), value_set=input_ids)).as_py() or 0)
    if not_in_input:
        metrics["rows_not_in_input"] = not_in_input
        log.warning("the output holds %d rows whose ids are not in this input (from an earlier input); they stay: "
                    "write to a new --output to have only this input's rows", not_in_input)
    index = index.to_pylist()
    committed = Counter("ok" if r["status"] == "ok" else "error" for r in index)
    committed.update(r["error_kind"] for r in index if r["status"] != "ok")
    return JobResult(
        job=config.job, run_id=run_id, input=storage.redact_uri(config.input), output=store.uri,
        input_rows=inputs.total, skipped_other_task=inputs.skipped_other_task, already_done=plan.already_done,
        processed=sum(plan.expected.values()), counts=counts, committed_rows=commit.rows, committed=dict(committed),
        complete=plan.complete, files=store.files(commit), metrics=metrics,
        metrics_path=storage.join(store.meta, "runs", f"{run_id}.json"), wall_s=wall_s,
        extra={"pending_after_limit": plan.cut, "storage_unavailable": plan.unavailable,
               "convention": inputs.convention, "rows_not_in_input": not_in_input},
    )
