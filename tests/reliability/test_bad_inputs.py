"""The bad-input corpus (``make_bad_inputs.py``) through real jobs: every kind gets its documented outcome (an
error row of its kind, or correct processing), and every run's counts add up (rows in == rows out, ok + error ==
total). The per-kind figures are checked against docs/reliability.md."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from jobs_helpers import committed

from jobs.pipeline import run_job

from . import report
from .helpers import small_config
from .make_bad_inputs import build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, s3, long_flac):
    bucket = s3.bucket("corpus")  # exists, but the corpus' key in it does not
    return {m.name: m for m in build_corpus(tmp_path_factory.mktemp("corpus"), s3_bucket=bucket,
                                            long_file=long_flac)}


def run_manifest(manifest, model, mlflow_uri, output, **overrides):
    result = run_job(small_config(manifest.job, manifest.path, output, model, mlflow_uri, **overrides))
    rows = committed(output)
    # the counts add up: one output row per input row, each either ok or an error with a kind
    assert result.input_rows == manifest.rows == len(rows) == result.committed_rows
    assert result.counts["ok"] + result.counts["error"] == len(rows) and result.complete
    assert all((r["status"] == "ok") == (r["error_kind"] is None) for r in rows)
    by_id = defaultdict(list)
    for row in rows:
        by_id[row["id"]].append(row)
    figures, wrong = {}, []
    for case in manifest.cases:
        expected = manifest.expected()[case.kind]
        mine = [r for row_id in dict.fromkeys(i for i, _ in expected) for r in by_id[row_id]]
        got = Counter((r["id"], r["error_kind"]) for r in mine)
        if got != Counter(expected):
            wrong.append(f"{case.kind}: expected {sorted(Counter(expected).items())}, got "
                         f"{sorted(got.items())} {[r['error'] for r in mine]}")
        for row_id, seconds in case.durations.items():
            row = next(r for r in mine if r["id"] == row_id)
            if row["duration_s"] != pytest.approx(seconds, abs=0.01):
                wrong.append(f"{case.kind}: duration {row['duration_s']} s, expected {seconds} s")
        for row_id, text in case.texts.items():
            row = next(r for r in mine if r["id"] == row_id)
            if row["text"] != text or row["status"] != "ok":  # carried through Arrow and Parquet unchanged
                wrong.append(f"{case.kind}: text {row['text']!r} ({row['status']}), expected {text!r}")
        figures[f"input.{case.kind}"] = report.Figures.of(len(case.lines), mine)
    assert not wrong, "\n".join(wrong)
    figures[f"corpus.{manifest.name}"] = report.Figures.of(manifest.rows, rows)
    report.check(figures)
    return result, rows


def test_audio_and_manifest_corpus(corpus, ray_runtime, tiny_checkpoint, mlflow_uri, tmp_path):
    _, rows = run_manifest(corpus["transcribe"], tiny_checkpoint, mlflow_uri, tmp_path / "out", batch_size=4)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["num_glm_tokens"] > 0 and r["segments"] for r in ok)  # really transcribed
    assert all("Traceback" not in (r["error"] or "") for r in rows)


def test_text_and_reference_corpus(corpus, ray_runtime, tiny_checkpoint, mlflow_uri, tmp_path):
    _, rows = run_manifest(corpus["synthesize"], tiny_checkpoint, mlflow_uri, tmp_path / "out",
                           options={"max_new_tokens": 16})
    for row in rows:
        if row["status"] == "ok":
            assert row["audio"]["bytes"] and row["semantic_tokens"] and len(row["global_tokens"]) == 32


def test_malformed_corpus(corpus, ray_runtime, tiny_checkpoint, mlflow_uri, tmp_path):
    run_manifest(corpus["malformed"], tiny_checkpoint, mlflow_uri, tmp_path / "out")


def test_hostile_manifest_corpus(corpus, ray_runtime, tiny_checkpoint, mlflow_uri, tmp_path):
    """Records that once stopped the job, were dropped, hung it or changed identity: one row each, no hang."""
    import time

    started = time.monotonic()
    result, _ = run_manifest(corpus["hostile"], tiny_checkpoint, mlflow_uri, tmp_path / "out")
    assert result.extra["convention"] == "canonical" and time.monotonic() - started < 300


def test_hostile_csv_corpus(corpus, ray_runtime, tiny_checkpoint, mlflow_uri, tmp_path):
    run_manifest(corpus["hostile_csv"], tiny_checkpoint, mlflow_uri, tmp_path / "out",
                 options={"max_new_tokens": 16})
