"""A real two-node Ray cluster on this machine, driven the way a scheduled cluster run is.

`ray start --head` and a second `ray start --address ...` node (each its own raylet, its own logical resources and
its own checkpoint cache), then `ray job submit` of `gpa-batch transcribe` over an S3 archive prefix (moto server
on 127.0.0.1) with the tiny checkpoint pulled from S3. Asserted: the rows, that model actors ran on both nodes, that
each node downloaded the checkpoint once into its own cache, the MLflow run; then a second "night" after new files
arrived transcribes only those. Every process started here is stopped at the end (by process tree, never by name).

Loopback only: Ray turns 127.0.0.1 into the machine's outward address, so the nodes use 127.0.0.2 and 127.0.0.3.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from jobs_helpers import free_port, free_ports

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "manifests" / "examples" / "audio"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
BIN = Path(sys.executable).parent


def _processes() -> dict[int, tuple[int, str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry)] = (ppid, cmdline)
    return found


def stop_process_trees(markers: list[str], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process whose command line holds one of ``markers`` (our temp dir, our GCS
    address) and all their descendants. `ray stop` is not used: it stops every Ray on the machine."""
    procs = _processes()
    doomed = {pid for pid, (_, cmd) in procs.items() if any(m in cmd for m in markers)}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        doomed |= children
        grew = bool(children)
    doomed.discard(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in doomed:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline:
            alive = [p for p in doomed if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]
            if not alive:
                return
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


class LocalRayCluster:
    """Two Ray nodes on loopback addresses, with token authentication so that no other Ray on the machine (nor
    a stray ~/.ray/auth_token) can talk to it."""

    def __init__(self, base_env: dict[str, str], caches: dict[str, Path]):
        self.temp = Path(tempfile.mkdtemp(prefix="gpa-ray-"))  # short: Ray's socket paths have a length limit
        gcs_port, dashboard_port = free_ports(2, HEAD_IP)
        self.gcs = f"{HEAD_IP}:{gcs_port}"
        self.dashboard = f"http://{HEAD_IP}:{dashboard_port}"
        path = [str(BIN), base_env.get("PATH", "")]
        self.env = {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        if shutil.which("gpa-batch", path=str(BIN)) is None:
            # The project is not pip-installed in this environment (CI installs it): an equivalent command, and
            # the sources importable by every Ray worker.
            shim = self.temp / "bin"
            shim.mkdir()
            (shim / "gpa-batch").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m jobs "$@"\n')
            (shim / "gpa-batch").chmod(0o755)
            path.insert(0, str(shim))
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base_env.get("PYTHONPATH")]))
        self.env["PATH"] = os.pathsep.join(path)
        self.caches = caches
        self.logs: list[str] = []

    def _ports(self, ip: str) -> list[str]:
        flags = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
        return [arg for flag, port in zip(flags, free_ports(len(flags), ip), strict=True) for arg in (flag, str(port))]

    def _start(self, args: list[str], cache: Path) -> None:
        env = {**self.env, "GPA_CACHE_DIR": str(cache)}
        out = subprocess.run([str(BIN / "ray"), "start", *args, "--disable-usage-stats"], env=env,
                             capture_output=True, text=True, timeout=180)
        self.logs.append(out.stdout + out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out.stdout}\n{out.stderr}")

    def start(self) -> None:
        host, port = self.gcs.split(":")
        self._start(["--head", "--node-ip-address", HEAD_IP, "--port", port, "--temp-dir", str(self.temp),
                     "--num-cpus", "2", "--resources", json.dumps({"head_node": 1}),
                     "--include-dashboard", "true", "--dashboard-host", HEAD_IP,
                     "--dashboard-port", self.dashboard.rsplit(":", 1)[1],
                     "--ray-client-server-port", str(free_port(HEAD_IP)), *self._ports(HEAD_IP)],
                    self.caches["head"])
        self._start(["--address", self.gcs, "--node-ip-address", WORKER_IP,
                     "--num-cpus", "2", "--resources", json.dumps({"worker_node": 1}), *self._ports(WORKER_IP)],
                    self.caches["worker"])

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def python(self, code: str) -> dict:
        """Run ``code`` (which prints one JSON document) against the cluster in a fresh interpreter."""
        out = subprocess.run([sys.executable, "-c", code], env={**self.env, "RAY_ADDRESS": self.gcs},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        stop_process_trees([str(self.temp), self.gcs])
        shutil.rmtree(self.temp, ignore_errors=True)


def upload(s3, bucket: str, names: list[str]) -> None:
    for name in names:
        s3.upload_file(str(AUDIO / name), bucket, f"archive/{name}")


def test_two_node_cluster_nightly_transcription(s3_server, s3_bucket, tiny_checkpoint, tmp_path):
    import boto3
    from jobs_helpers import migrated_mlflow_db
    from mlflow.tracking import MlflowClient

    from jobs.io.output import OutputStore

    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed")
    # The dashboard, which serves `ray job submit`, needs Ray's "default" extra.
    pytest.importorskip("aiohttp_cors", reason="pip install 'ray[default]'")
    pytest.importorskip("opencensus", reason="pip install 'ray[default]'")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for path in sorted(Path(tiny_checkpoint).rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"models/tiny/{path.relative_to(tiny_checkpoint)}")
    first_night = ["espeak_short.flac", "espeak_numbers.flac", "espeak_weather.flac"]
    upload(s3, s3_bucket, first_night)

    mlflow_uri = f"sqlite:///{migrated_mlflow_db(tmp_path / 'mlflow.db')}"
    caches = {"head": tmp_path / "cache-head", "worker": tmp_path / "cache-worker"}
    cluster = LocalRayCluster(dict(os.environ), caches)  # os.environ carries the AWS settings of s3_server
    output = f"s3://{s3_bucket}/transcripts"
    command = ["gpa-batch", "transcribe", "--input", f"s3://{s3_bucket}/archive/", "--glob", "*.flac",
               "--output", output, "--model", f"s3://{s3_bucket}/models/tiny/",
               # one model actor per node: each node has 2 logical CPUs, an actor takes 1.5
               "--actors", "2:2", "--cpus-per-actor", "1.5", "--cpus-per-task", "0.25", "--gpus-per-actor", "0",
               # one row per block, so that both actors get some
               "--batch-size", "1", "--bucket-batches", "1", "--max-new-tokens", "8", "--rows-per-part", "2",
               "--mlflow-uri", mlflow_uri, "--experiment", "gpa-cluster-test", "--no-progress"]
    started = time.time()

    def log(message: str) -> None:  # shown with -s or on failure: where the time goes
        print(f"[{time.time() - started:6.1f}s] {message}", flush=True)

    try:
        cluster.start()
        log("two nodes up")
        nodes = cluster.python(
            "import json, ray; ray.init(); print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() "
            "if n['Alive']]))")
        assert sorted(nodes) == [HEAD_IP, WORKER_IP]

        submissions = []
        for night, new_files in enumerate([first_night, ["jfk.flac", "espeak_library.flac"]]):
            if night:
                upload(s3, s3_bucket, new_files)
            submission = f"gpa-nightly-test-{night}"
            # The actor pool starts dispatching once both actors are up (as a RayJob's runtimeEnvYAML would set it).
            runtime_env = {"env_vars": {"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600"}}
            out = cluster.ray("job", "submit", "--address", cluster.dashboard, "--submission-id", submission,
                              "--runtime-env-json", json.dumps(runtime_env), "--", *command)
            assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-4000:] + out.stderr[-4000:]
            log(f"night {night} done; the driver said:\n" + "\n".join(out.stdout.splitlines()[-40:]))
            submissions.append(submission)
            rows = OutputStore(output).read(columns=["id", "status"]).to_pylist()
            ids = [r["id"] for r in rows]
            expected = first_night if night == 0 else first_night + new_files
            assert len(ids) == len(set(ids)) == len(expected), "every file exactly once"
            assert all(r["status"] == "ok" for r in rows)

        # Both nodes ran model batches (finished actor tasks of the model stage, from Ray's state API), and each
        # node pulled the checkpoint into its own cache exactly once.
        work = cluster.python(
            "import json\n"
            "from ray.job_submission import JobSubmissionClient\n"
            "from ray.util.state import list_tasks\n"
            f"client = JobSubmissionClient({cluster.dashboard!r})\n"
            "rows = []\n"
            f"for submission in {submissions!r}:\n"
            "    job_id = client.get_job_info(submission).job_id\n"
            f"    tasks = list_tasks(address={cluster.dashboard!r}, filters=[('job_id', '=', job_id)], detail=True,"
            " limit=10000, raise_on_missing_output=False)\n"
            "    rows += [[t.name, t.type, t.state, t.node_id] for t in tasks]\n"
            "print(json.dumps(rows))")
        node_ids = cluster.python(
            "import json, ray; ray.init(); print(json.dumps({n['NodeManagerAddress']: n['NodeID'] "
            "for n in ray.nodes()}))")
        model_batches = [(name, node) for name, kind, state, node in work
                         if kind == "ACTOR_TASK" and "GPAStage" in name and "__init__" not in name
                         and state == "FINISHED"]
        assert {node for _, node in model_batches} == set(node_ids.values()), work
        for cache in caches.values():
            assert len([p for p in cache.iterdir() if not p.name.endswith(".partial")]) == 1, list(cache.iterdir())

        runs = MlflowClient(tracking_uri=mlflow_uri).search_runs(
            [MlflowClient(tracking_uri=mlflow_uri).get_experiment_by_name("gpa-cluster-test").experiment_id])
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        log("checked")
    finally:
        cluster.stop()
        log("stopped")
    leftovers = [pid for pid, (_, cmd) in _processes().items()
                 if (str(cluster.temp) in cmd or cluster.gcs in cmd) and _state(pid) != "Z"]
    assert leftovers == []
