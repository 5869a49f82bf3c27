"""What a run does: the input rows without a committed row, each with its seed, in the order they go through."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import JobConfig
from jobs.io import storage
from jobs.io.manifest import InputRows
from jobs.io.output import OutputStore, resume_plan
from jobs.tasks.seeds import row_seed


@dataclass
class Plan:
    todo: pa.Table  # valid rows to process (schema.INPUT), each with its seed
    invalid: list[dict]  # rows that failed validation, to write as error rows
    already_done: int
    cut: int  # pending rows left for a later run by --limit
    supersede: bool  # some of this run's ids already have committed rows (retries)
    unavailable: int = 0  # rows of this run whose input the store could not serve (storage_unavailable)

    @property
    def complete(self) -> bool:
        return self.cut == 0 and self.unavailable == 0

    @property
    def expected(self) -> Counter:
        return Counter(self.todo.column("id").to_pylist() + [e["id"] for e in self.invalid])


def plan_run(config: JobConfig, inputs: InputRows, store: OutputStore) -> Plan:
    """What this run does: the input rows without a committed row (and, with --retry-errors, the failed ones)."""
    wanted = Counter(inputs.table.column("id").to_pylist() + [e["id"] for e in inputs.errors])
    versions = {i: v for i, v in zip(inputs.table.column("id").to_pylist(),
                                     inputs.table.column("input_version").to_pylist(), strict=True) if v is not None}
    done, redo = resume_plan(store.index(), config.retry_errors, wanted, versions)
    if config.mode == "redo":  # every input row again; the new rows supersede the committed ones
        redo = set(done)
    finished = done - redo
    todo = inputs.table
    if finished:
        todo = todo.filter(pc.invert(pc.is_in(todo.column("id"), value_set=pa.array(finished, pa.string()))))
    invalid = [e for e in inputs.errors if e["id"] not in finished]
    cut = 0
    if config.limit is not None and todo.num_rows > config.limit:
        cut = todo.num_rows - config.limit
        deferred = set(todo.column("id").to_pylist()[config.limit:])
        todo = todo.slice(0, config.limit)
        # an id's rows go together: its duplicates wait for the run that does its first row
        cut += sum(e["id"] in deferred for e in invalid)
        invalid = [e for e in invalid if e["id"] not in deferred]
    seeds = [row_seed(config.seed, row_id, seed)
             for row_id, seed in zip(todo.column("id").to_pylist(), todo.column("seed").to_pylist(), strict=True)]
    todo = todo.set_column(todo.schema.get_field_index("seed"), "seed", pa.array(seeds, pa.int64()))
    already_done = inputs.total - (todo.num_rows + cut) - len(invalid)
    return Plan(todo=todo, invalid=invalid, already_done=already_done, cut=cut, supersede=bool(redo & done))


def pipeline_order(task, rows: pa.Table) -> np.ndarray:
    """The order (row indices) rows go through the pipeline in.

    Longest first: similar lengths share a window (little padding) and the stragglers do not come last. Segments
    of long recordings instead go file by file, in time order, so that a decode worker decodes each recording once
    for its consecutive segments; GPA still sorts each window by true length.
    """
    if rows.column("begin_time").null_count < rows.num_rows or rows.column("end_time").null_count < rows.num_rows:
        keys = pa.table({"audio": pc.fill_null(rows.column("audio"), ""),
                         "begin": pc.fill_null(rows.column("begin_time"), 0.0)})
        return pc.sort_indices(keys, [("audio", "ascending"), ("begin", "ascending")]).to_numpy()
    lengths = task.lengths(rows)
    if not lengths.all():  # no duration in the manifest: local files are ordered by their size
        lengths = task.lengths(with_local_sizes(rows, lengths == 0))
    return np.argsort(-lengths, kind="stable")


def with_local_sizes(rows: pa.Table, unknown: np.ndarray) -> pa.Table:
    """``rows`` with ``size_bytes`` filled in for the ``unknown`` rows whose audio is a local file. (Objects in a
    store would cost a request each: a manifest of them is ordered within each window only, see docs/jobs.md.)"""
    from concurrent.futures import ThreadPoolExecutor

    def sizes_of(paths: list[str]) -> list[int | None]:
        found = []
        for path in paths:
            try:
                found.append(os.stat(path).st_size)
            except OSError:  # a missing file becomes its row's error later, not the planner's
                found.append(None)
        return found

    sizes = rows.column("size_bytes").to_pylist()
    audio = rows.column("audio").to_pylist()
    todo = [i for i in np.flatnonzero(unknown) if sizes[i] is None and audio[i] and not storage.is_uri(audio[i])]
    # threads, as each stat on a network file system (a cluster's shared disk) waits on a round trip; chunks, as
    # a future per file would cost more than a local stat (~4 us)
    chunks = [[audio[i] for i in todo[k: k + 4096]] for k in range(0, len(todo), 4096)]
    with ThreadPoolExecutor(8) as pool:
        found = [size for chunk in pool.map(sizes_of, chunks) for size in chunk]
    for i, size in zip(todo, found, strict=True):
        sizes[i] = size
    return rows.set_column(rows.schema.get_field_index("size_bytes"), "size_bytes", pa.array(sizes, pa.int64()))
