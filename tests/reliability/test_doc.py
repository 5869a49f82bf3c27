"""docs/reliability.md has exactly one row per case the tests measure: none missing, none stale."""

from __future__ import annotations

import re
from pathlib import Path

from . import report
from .make_bad_inputs import build_corpus


def test_the_doc_lists_exactly_the_measured_cases(tmp_path):
    long_file = tmp_path / "two_hours.flac"
    long_file.write_bytes(b"")  # the corpus only needs its path here
    manifests = build_corpus(tmp_path / "corpus", long_file=long_file)
    expected = {f"input.{c.kind}" for m in manifests for c in m.cases} | {f"corpus.{m.name}" for m in manifests}
    sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    expected |= set(re.findall(r'"((?:fault|security|memory)\.[a-z0-9_]+)"', sources))
    documented = set(report.doc_rows())
    assert documented == expected, {"not measured": sorted(documented - expected),
                                    "not documented": sorted(expected - documented)}
    kinds = sum(len(m.cases) for m in manifests)
    assert kinds >= 25
