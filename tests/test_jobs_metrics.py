"""Run metrics from output rows (no Ray): corpus WER/CER are jiwer's corpus figures, not means of row rates."""

from __future__ import annotations

import jiwer
import pyarrow as pa
import pytest

from jobs.run.metrics import run_metrics
from jobs.tasks.quality import error_rates, normalize_text

PAIRS = [  # (reference, hypothesis): a long row and a short one, with very different error rates
    ("And so, my fellow Americans: ask not what your country can do for you.",
     "and so my fellow americans ask not what your country can do for you"),
    ("Hello there!", "yellow bear"),
    ("One, two, three.", ""),
]


def rows(job: str, reference_field: str) -> pa.Table:
    out = []
    for i, (ref, hyp) in enumerate(PAIRS):
        wer, cer = error_rates(ref, hyp)
        out.append({"id": f"r{i}", "status": "ok", "error_kind": None, "duration_s": 1.0, reference_field: ref,
                    "wer": wer, "cer": cer, "timings": {"model_s": 0.5, "latency_s": 1.0}})
    out.append({"id": "bad", "status": "error", "error_kind": "unreadable_audio", "duration_s": None,
                reference_field: "x", "wer": None, "cer": None, "timings": None})
    return pa.Table.from_pylist(out)


@pytest.mark.parametrize("job,reference_field", [("transcribe", "reference"), ("synthesize", "text")])
def test_corpus_error_rates_are_jiwers_over_all_rows(job, reference_field):
    m = run_metrics(job, rows(job, reference_field), wall_s=10.0)
    refs = [normalize_text(r) for r, _ in PAIRS]
    hyps = [normalize_text(h) for _, h in PAIRS]
    assert m["wer_corpus"] == pytest.approx(jiwer.wer(refs, hyps))
    assert m["cer_corpus"] == pytest.approx(jiwer.cer(refs, hyps))
    rates = [error_rates(r, h)[0] for r, h in PAIRS]
    assert m["wer_mean"] == pytest.approx(sum(rates) / 3) and m["wer_rows"] == 3
    assert m["wer_corpus"] < m["wer_mean"]  # the long, nearly right row weighs more than the two short wrong ones
    assert m["rows_error.unreadable_audio"] == 1 and m["rows_ok"] == 3


def test_no_references_no_error_rates():
    table = pa.Table.from_pylist([{"id": "a", "status": "ok", "error_kind": None, "duration_s": 1.0,
                                   "timings": {"model_s": 0.5, "latency_s": 1.0}}])
    m = run_metrics("transcribe", table, wall_s=1.0)
    assert not any(k.startswith(("wer", "cer")) for k in m)
