"""The figures of docs/reliability.md come from these tests, as they run.

Every scenario records what it measured (rows in/out, ok/error, error kinds; peak memory) with :func:`check`.
The figure columns of the doc's tables must equal the measurement (memory: lie within a tolerance of it), or the
test fails naming the stale cells; the prose columns are free text. ``GPA_RELIABILITY_UPDATE_DOC=1`` rewrites
the figure cells from the measurements instead. Every measurement is also appended to a JSON report
(``GPA_RELIABILITY_REPORT``, default ``reliability-report.json`` in the pytest temporary directory) for CI.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
UPDATE_ENV = "GPA_RELIABILITY_UPDATE_DOC"
REPORT_ENV = "GPA_RELIABILITY_REPORT"
MEMORY_TOLERANCE = 0.5  # a peak may differ from the documented one by this fraction (machines, versions)

_ROW = re.compile(r"^\|\s*`(?P<key>[a-z0-9_.\-]+)`\s*\|")


@dataclass
class Figures:
    rows_in: int
    rows_out: int
    ok: int
    error: int
    kinds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, rows_in: int, rows: list[dict]) -> Figures:
        errors = [r for r in rows if r["status"] != "ok"]
        return cls(rows_in, len(rows), len(rows) - len(errors), len(errors),
                   dict(Counter(r["error_kind"] for r in errors)))

    def cells(self) -> list[str]:
        kinds = ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in sorted(self.kinds.items())) or "–"
        return [str(self.rows_in), str(self.rows_out), str(self.ok), str(self.error), kinds]


def report_path() -> Path | None:
    value = os.environ.get(REPORT_ENV)
    return Path(value) if value else None


def _append_report(entry: dict) -> None:
    path = report_path()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def doc_rows(text: str | None = None) -> dict[str, list[str]]:
    """``key -> cells`` of every table row of the doc whose first cell is a `key`."""
    text = DOC.read_text() if text is None else text
    rows = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            assert match.group("key") not in rows, f"{DOC.name}: two rows for {match.group('key')}"
            rows[match.group("key")] = [c.strip() for c in line.strip().strip("|").split("|")]
    return rows


def check(measured: dict[str, Figures]) -> None:
    """Assert (or, in update mode, write) the figure cells of the doc rows named by ``measured``' keys."""
    for key, figures in measured.items():
        _append_report({"key": key, **asdict(figures)})
    _reconcile({key: f.cells() for key, f in measured.items()}, exact=True)


def check_measurement(key: str, value: float, unit: str) -> None:
    """A measured quantity (e.g. peak RSS in MiB): the doc must state it to within :data:`MEMORY_TOLERANCE`."""
    _append_report({"key": key, "value": value, "unit": unit})
    _reconcile({key: [f"{value:,.0f} {unit}"]}, exact=False)


def _reconcile(cells_by_key: dict[str, list[str]], exact: bool) -> None:
    text = DOC.read_text()
    rows = doc_rows(text)
    stale, changed = [], {}
    for key, cells in cells_by_key.items():
        if key not in rows:
            stale.append(f"{key}: no row in {DOC.name}")
            continue
        documented = rows[key][-len(cells):]
        if documented != cells:
            changed[key] = cells
        if documented != cells and (exact or not _close(documented[0], cells[0])):
            stale.append(f"{key}: documented {documented}, measured {cells}")
    missing = [s for s in stale if "no row in" in s]
    if changed and not missing and os.environ.get(UPDATE_ENV):  # write this run's figures into the doc
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            match = _ROW.match(line)
            if match and match.group("key") in changed:
                cells = changed[match.group("key")]
                old = [c.strip() for c in line.strip().strip("|").split("|")]
                lines[i] = "| " + " | ".join(old[: len(old) - len(cells)] + cells) + " |\n"
        DOC.write_text("".join(lines))
        return
    assert not stale, (f"{DOC} disagrees with this run's measurements (regenerate the figure cells with "
                       f"{UPDATE_ENV}=1 python -m pytest tests/reliability):\n  " + "\n  ".join(stale))


def _close(documented: str, measured: str) -> bool:
    number = re.compile(r"[\d,]+(?:\.\d+)?")
    a, b = number.search(documented), number.search(measured)
    if not a or not b:
        return False
    x, y = float(a.group().replace(",", "")), float(b.group().replace(",", ""))
    return abs(x - y) <= MEMORY_TOLERANCE * max(x, y)
