"""Arrow types shared by the tasks' outputs (documented in docs/outputs.md; each task declares its own columns in
:mod:`jobs.tasks`) and columnar helpers.

Every Parquet file carries Hugging Face ``datasets`` feature metadata, so ``load_dataset("parquet", ...)`` types
the ``audio`` column as ``Audio(sampling_rate=16000)``.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

SAMPLE_RATE = 16000

AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TIMINGS = pa.struct([("decode_s", pa.float64()), ("model_s", pa.float64()), ("encode_s", pa.float64()),
                     ("latency_s", pa.float64()), ("finished_at", pa.float64())])
SEGMENT = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])
TOKENS = pa.list_(pa.int32())

# the canonical input fields every manifest convention is mapped to (see jobs/io/manifest.py); then, not manifest
# fields, the size of the audio file when the planner knows it (from a listing or a local stat) and the version a
# listing saw the file at (its size and ETag or mtime: a rerun redoes a file changed since)
INPUT = pa.schema([
    ("id", pa.string()), ("audio", pa.string()), ("text", pa.string()), ("ref_audio", pa.string()),
    ("ref_id", pa.string()), ("source_id", pa.string()), ("begin_time", pa.float64()), ("end_time", pa.float64()),
    ("seed", pa.int64()), ("duration_hint", pa.float64()), ("size_bytes", pa.int64()), ("input_version", pa.string()),
])
LISTING_ONLY = ("size_bytes", "input_version")

COMMON = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok | error
    pa.field("error_kind", pa.string()),
    pa.field("error", pa.string()),
    pa.field("model_source", pa.string()),
    pa.field("model_hash", pa.string()),
    pa.field("params", pa.string()),  # JSON: the task options and the row's seed
    pa.field("seed", pa.int64()),
    pa.field("duration_s", pa.float64()),
    pa.field("timings", TIMINGS),
    pa.field("run_id", pa.string()),
    pa.field("input_version", pa.string()),  # --glob: the file's size and ETag/mtime as listed (else null)
]

def output_fields() -> list[pa.Field]:
    """Every task's output columns (a column two tasks share has one type)."""
    from jobs.tasks import TASKS

    return [f for task in TASKS.values() for f in task.output_schema]


def output_schema(job: str) -> pa.Schema:
    """The output schema of the task called ``job``: :data:`COMMON`, then the task's own columns (declared in
    its module, :mod:`jobs.tasks`)."""
    from jobs.tasks import get_task

    return get_task(job).output_schema


def with_hf_features(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the ``datasets`` feature metadata every output Parquet file carries."""
    return schema.with_metadata({b"huggingface": json.dumps({"info": {"features": hf_features(schema)}}).encode()})


def hf_features(schema: pa.Schema) -> dict:
    """The ``datasets`` Features JSON of ``schema`` (``audio`` columns as ``Audio``)."""
    return {f.name: (_hf_audio() if f.type == AUDIO else _hf_type(f.type)) for f in schema}


def _hf_audio() -> dict:
    return {"sampling_rate": SAMPLE_RATE, "_type": "Audio"}


def _hf_type(t: pa.DataType) -> dict:
    if pa.types.is_struct(t):
        return {t.field(i).name: _hf_type(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"feature": _hf_type(t.value_type), "_type": "List"}
    names = {pa.string(): "string", pa.binary(): "binary", pa.bool_(): "bool", pa.int32(): "int32",
             pa.int64(): "int64", pa.float32(): "float32", pa.float64(): "float64"}
    return {"dtype": names[t], "_type": "Value"}


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys are null) as a table of exactly ``schema``."""
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


# --- waveforms as Arrow columns (no per-sample Python objects) ---------------------------------------------------

WAV = pa.large_list(pa.float32())


def wav_array(arrays: list[np.ndarray | None]) -> pa.Array:
    lengths = np.array([0 if a is None else len(a) for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    present = [np.asarray(a, dtype=np.float32) for a in arrays if a is not None]
    # one array (a long recording has a block to itself) goes in without a copy: the column shares its memory
    values = present[0] if len(present) == 1 else np.concatenate(present) if present else np.zeros(0, np.float32)
    mask = pa.array(np.array([a is None for a in arrays], dtype=bool))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values), mask=mask)


def wav_list(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return []
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    # copies: Arrow buffers are read-only, and torch warns about (and must not write into) read-only arrays
    return [values[offsets[i]: offsets[i + 1]].copy() if valid[i] else None for i in range(len(array))]
