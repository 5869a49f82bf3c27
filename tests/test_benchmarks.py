"""The throughput benchmark runs by its protocol on the CPU and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpa_throughput_writes_every_task_with_its_stages(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "benchmarks/gpa_throughput.py", "--items", "3", "--batch-size", "3",
                           "--engine", "static", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["cuda_graphs"] is False  # the static engine on the CPU: eager steps
    assert report["engine"] == "static" and set(report["tasks"]) == {"transcribe", "synthesize", "convert"}
    for name, figures in report["tasks"].items():
        batched = figures["batched"]
        assert batched["items"] == 3 and batched["realtime_factor"] > 0, name
        assert {"prefill", "decode steps"} <= set(batched["stages_s"]), name
    assert "detokenize" in report["tasks"]["synthesize"]["batched"]["stages_s"]
    assert "GLM encode" in report["tasks"]["transcribe"]["batched"]["stages_s"]


def test_gpa_throughput_budget_cuts_each_task_and_keeps_the_figures(tmp_path):
    # A device slot is short: past the budget no further batch starts, and every task is still reported.
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "benchmarks/gpa_throughput.py", "--items", "3", "--batch-size", "1",
                           "--budget-s", "0", "--tasks", "transcribe,convert", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    for name in ("transcribe", "convert"):
        batched = report["tasks"][name]["batched"]
        assert batched["items"] == 1 and batched["cut"] is True, name
        assert batched["realtime_factor"] > 0
    assert "cut at the budget: 1 of 3 items" in done.stdout
    assert not list(tmp_path.glob("*.partial"))
