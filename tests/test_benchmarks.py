"""The throughput benchmark runs by its protocol on the CPU and writes its figures."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
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
    assert report["encoder_precision"] == "float32"  # the default; gpu.sh asks for bfloat16
    for name, figures in report["tasks"].items():
        batched = figures["batched"]
        assert batched["items"] == 3 and batched["realtime_factor"] > 0, name
        assert {"prefill", "decode steps"} <= set(batched["stages_s"]), name
    assert "detokenize" in report["tasks"]["synthesize"]["batched"]["stages_s"]
    assert "GLM encode" in report["tasks"]["transcribe"]["batched"]["stages_s"]


def test_gpa_throughput_repeats_each_mode_and_keeps_the_median_run(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "benchmarks/gpa_throughput.py", "--items", "2", "--batch-size", "2",
                           "--tasks", "synthesize", "--sequential", "--repeat", "3", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    figures = report["tasks"]["synthesize"]
    assert report["repeat"] == 3
    for mode in ("batched", "sequential"):
        runs = figures[mode]["runs_s"]
        assert len(runs) == 3 and figures[mode]["seconds"] == sorted(runs)[1], mode  # the median of three
    assert figures["speed_up"] == round(figures["batched"]["items_per_s"] / figures["sequential"]["items_per_s"], 2)


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


# --- the device kit (benchmarks/device_kit.py, benchmarks/device_run.sh): its offline parts ---

sys.path.insert(0, str(ROOT / "benchmarks"))
import device_kit  # noqa: E402


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(path: Path, requires: list[str]) -> Path:
    """A valid wheel of the package 'toy' with an executable, a jar and a RECORD that lists them."""
    files = {
        "toy/__init__.py": b"VALUE = 1\n",
        "toy/core/server": b"#!/bin/sh\necho serving\n",
        "toy/jars/big.jar": b"\0" * 4096,
        "toy-1.0.dist-info/METADATA": ("Metadata-Version: 2.1\nName: toy\nVersion: 1.0\n"
                                       + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        "toy-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(_record_line(n, d) + "\n" for n, d in files.items()) + "toy-1.0.dist-info/RECORD,,\n"
    wheel = path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | (0o755 if name.endswith("server") else 0o644)) << 16
            z.writestr(info, data)
        z.writestr("toy-1.0.dist-info/RECORD", record)
    return wheel


def test_slim_wheel_leaves_out_a_folder_and_pip_installs_the_rest_as_recorded(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "kit").mkdir()
    source = _write_wheel(tmp_path / "full", [])
    slim = tmp_path / "kit" / source.name
    assert device_kit.slim_wheel(source, slim, ("toy/jars/",)) == 1
    site = tmp_path / "site"
    # the device's install command (benchmarks/device_run.sh)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), str(slim)], check=True, timeout=120)
    assert not (site / "toy" / "jars").exists()
    assert (site / "toy" / "__init__.py").read_text() == "VALUE = 1\n"
    assert os.access(site / "toy" / "core" / "server", os.X_OK)  # raylet and gcs_server must stay executable
    recorded = (site / "toy-1.0.dist-info" / "RECORD").read_text()
    assert "jars" not in recorded and "toy/core/server" in recorded
    listed = [line.split(",")[0] for line in recorded.splitlines() if line]
    assert all((site / name).exists() for name in listed if not name.startswith(".."))


def test_unmet_requirements_are_those_neither_on_the_device_nor_in_the_kit(tmp_path):
    wheel = _write_wheel(tmp_path, ["numpy>=1.20", "Made_Up.Package", "mlflow; extra == 'tracking'",
                                    "async-timeout; python_version < '3.11'", "jsonschema", "torch"])
    # numpy and torch are in the image, the extra and the marker do not apply to CPython 3.12 on Linux
    assert device_kit.unmet_requirements([wheel]) == [f"{wheel.name}: made-up-package", f"{wheel.name}: jsonschema"]
    assert device_kit.normalize("jsonschema_specifications") in device_kit.DEVICE_IMAGE | set(device_kit.KIT)


def test_kit_pins_only_what_the_device_image_lacks():
    assert device_kit.KIT["ray"] == "2.60.0"
    assert not {device_kit.normalize(n) for n in device_kit.KIT} & device_kit.DEVICE_IMAGE


def test_travelling_size_counts_tracked_files_and_the_kit(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "tracked.txt").write_bytes(b"x" * 1000)
    (tmp_path / "untracked.txt").write_bytes(b"y" * 500)
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked.txt"], check=True)
    assert device_kit.tracked_bytes(tmp_path) == 1000
    (tmp_path / ".whl").mkdir()
    _write_wheel(tmp_path / ".whl", [])
    assert device_kit.folder_bytes(tmp_path / ".whl") == (tmp_path / ".whl" / "toy-1.0-py3-none-any.whl").stat().st_size


def _device_run(tmp_path, kit: Path, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, "KIT": str(kit), "SITE": str(tmp_path / "site"),
               "OUT": str(tmp_path / "out"), "DRY_RUN": "1", **env}
    return subprocess.run(["bash", "benchmarks/device_run.sh"], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=300)


def test_device_run_installs_the_kit_and_checks_the_imports_without_a_gpu(tmp_path):
    (tmp_path / "kit").mkdir()
    _write_wheel(tmp_path / "kit", [])
    done = _device_run(tmp_path, tmp_path / "kit", N="50")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "toy" / "__init__.py").exists()
    assert "N=50" in done.stdout and f"results in {tmp_path / 'out'}" in done.stdout
    assert (tmp_path / "out").is_dir()


def test_device_run_without_a_kit_is_one_line(tmp_path):
    done = _device_run(tmp_path, tmp_path / "missing")
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        f"device_run: no wheels in {tmp_path / 'missing'}/: run 'python benchmarks/device_kit.py' first and carry .whl"]


def test_job_benchmark_runs_without_mlflow_and_says_so(tmp_path):
    """The device image has no MLflow and the kit does not carry it: the job must run without it."""
    blocked = tmp_path / "blocked" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n")
    environ = {**os.environ, "PYTHONPATH": f"{blocked.parent}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "benchmarks/pipeline.py", "--n", "4", "--actors", "1", "--no-unbucketed"],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MLflow did not record the pipeline runs (ModuleNotFoundError: No module named 'mlflow')" in done.stdout
    assert any(line.startswith("pipeline fused") for line in done.stdout.splitlines()), done.stdout
