"""Reading outputs as docs/outputs.md says, its snippets run as written: pyarrow on S3 (moto server), pandas with
nullable integers, Hugging Face ``datasets`` without torchcodec and without gpa-batch."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from jobs_helpers import output_part, uncommitted_leftovers, write_output

from gpa.audio import encode_flac
from jobs.io.output import OutputStore

DOCS = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


def reading_snippets() -> list[str]:
    text = DOCS.read_text()
    section = text[text.index("## Reading\n"): text.index("## Columns of every job")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def transcripts_in_two_versions(uri: str) -> OutputStore:
    """A transcribe output: a part an earlier version wrote (no ``input_version`` column), then a newer part with
    an error row (null seed and counts); a killed run's leftovers beside them."""
    old = output_part("transcribe", [{"id": "a", "status": "ok", "text": "one", "seed": 2**40 + 1,
                                      "num_generated_tokens": 7, "truncated": False}], without=("input_version",))
    new = output_part("transcribe", [
        {"id": "b", "status": "ok", "text": "two", "seed": 5, "num_generated_tokens": 3, "truncated": True,
         "input_version": "v1"},
        {"id": "c", "status": "error", "error_kind": "unreadable_audio", "error": "not audio"},
    ])
    store = write_output(uri, "transcribe", [old, new])
    uncommitted_leftovers(store, "transcribe", "killed-row")
    return store


def test_the_documented_s3_reading_and_pandas_snippets_run_as_written(s3_bucket):
    uri = f"s3://{s3_bucket}/out"
    store = transcripts_in_two_versions(uri)
    with pytest.raises(pa.ArrowInvalid):  # what the docs used to say: pyarrow alone cannot read these URIs
        pq.read_table(store.files())

    pyarrow_snippet, pandas_snippet = reading_snippets()[:2]
    assert '"s3://bucket/out"' in pyarrow_snippet
    namespace: dict = {}
    exec(pyarrow_snippet.replace("s3://bucket/out", uri), namespace)
    table = namespace["table"]
    assert sorted(table.column("id").to_pylist()) == ["a", "b", "c"]  # committed rows only
    assert namespace["dataset"].schema.field("input_version").type == "string"  # the old part reads it as null

    exec(pandas_snippet, namespace)
    df = namespace["df"].set_index("id")
    assert str(df["seed"].dtype) == "Int64" and str(df["num_generated_tokens"].dtype) == "Int32"
    assert df.loc["a", "seed"] == 2**40 + 1  # exact: no detour through float64
    assert df.loc["c", "seed"] is pd.NA and df.loc["b", "num_generated_tokens"] == 3
    assert table.to_pandas()["seed"].dtype == np.float64  # what the mapping is for


def test_dataset_of_a_local_output_and_of_an_empty_one(tmp_path):
    store = transcripts_in_two_versions(str(tmp_path / "out"))
    table = store.dataset().to_table()
    assert sorted(table.column("id").to_pylist()) == ["a", "b", "c"]
    versions = dict(zip(table.column("id").to_pylist(), table.column("input_version").to_pylist(), strict=True))
    assert versions == {"a": None, "b": "v1", "c": None}
    empty = OutputStore(str(tmp_path / "nothing")).dataset()
    assert empty.to_table().num_rows == 0


def test_the_documented_datasets_recipe_needs_neither_torchcodec_nor_gpa_batch(tmp_path):
    pytest.importorskip("datasets")
    t = np.arange(8000) / 16000
    voice = (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    flac = encode_flac(voice)
    rows = [{"id": "err", "status": "error", "error_kind": "empty_generation", "error": "no tokens"},
            {"id": "x", "status": "ok", "text": "hi", "audio": {"bytes": flac, "path": "x.flac"},
             "sampling_rate": 16000, "keep": True}]
    store = write_output(str(tmp_path / "out"), "synthesize", [output_part("synthesize", rows)])
    uncommitted_leftovers(store, "synthesize", "killed-row")
    snippet = reading_snippets()[2]
    check = ("\nimport sys\nassert 'jobs' not in sys.modules and 'gpa' not in sys.modules\n"
             "print(json.dumps({'rows': ds.num_rows, 'rate': rate, 'samples': samples.tolist()}))\n")
    # a fresh interpreter, from the folder holding ./out, with nothing of this project on its path
    done = subprocess.run([sys.executable, "-I", "-c", snippet + check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
                                                       "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == 2 and result["rate"] == 16000  # the killed run's row is not among them
    expected, _ = sf.read(io.BytesIO(flac))
    np.testing.assert_array_equal(np.asarray(result["samples"]), expected)
