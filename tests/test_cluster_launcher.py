"""The CronJob fallback's launcher (cluster/kubernetes/base/launch_rayjob.py) against a fake Kubernetes API
server on 127.0.0.1 that stores RayJobs and moves them through KubeRay's states."""

from __future__ import annotations

import datetime
import importlib.util
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "kubernetes" / "base" / "launch_rayjob.py"
NAMESPACE = "gpa-batch"


def load_launcher():
    spec = importlib.util.spec_from_file_location("launch_rayjob", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = load_launcher()


def the_template() -> dict:
    docs = list(yaml.safe_load_all((ROOT / "cluster" / "kubernetes" / "base" / "nightly-cronjob.yaml").read_text()))
    (template,) = [d for d in docs if d["kind"] == "RayJob"]
    template["metadata"].update(namespace=NAMESPACE, uid="template-uid", resourceVersion="7")
    template["spec"]["rayClusterSpec"] = {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "h"}]}}}}
    template["status"] = {"jobDeploymentStatus": "Suspended"}
    return template


class FakeKube:
    """Just enough of the API server: GET/list/POST/DELETE RayJobs in one namespace. A created RayJob reports
    Initializing, then Running, then the final state given to the constructor (None: it runs forever). ``errors``
    holds (method, HTTP code) answers to give instead of the next matching requests, in order; a deleted RayJob
    stays readable for two more GETs (foreground deletion of its cluster), then is gone."""

    def __init__(self, final=("Complete", "SUCCEEDED"), age_s: float = 0.0):
        self.objects = {"gpa-transcribe-nightly-template": the_template()}
        self.final = final
        self.age_s = age_s  # created RayJobs look this much older (a run started by an earlier pod)
        self.reads: dict[str, int] = {}
        self.created: list[dict] = []
        self.deleted: list[tuple[str, dict]] = []
        self.errors: list[tuple[str, int]] = []
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _injected(self, method) -> bool:
                fake.requests.append(f"{method} {self.path}")
                for i, (m, code) in enumerate(fake.errors):
                    if m == method:
                        del fake.errors[i]
                        self._send(code, {"kind": "Status", "code": code, "message": f"injected {code}"})
                        return True
                return False

            def do_GET(self):
                if self._injected("GET"):
                    return
                url = urllib.parse.urlparse(self.path)
                prefix = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"
                if url.path == prefix:
                    selector = urllib.parse.parse_qs(url.query).get("labelSelector", [""])[0]
                    key, _, value = selector.partition("=")
                    items = [o for o in fake.objects.values() if o["metadata"].get("labels", {}).get(key) == value]
                    return self._send(200, {"kind": "RayJobList", "items": items})
                name = url.path.removeprefix(prefix + "/")
                if name not in fake.objects:
                    return self._send(404, {"kind": "Status", "code": 404,
                                            "message": f'rayjobs.ray.io "{name}" not found'})
                return self._send(200, fake.read(name))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._injected("POST"):
                    return
                return self._send(201, fake.create(body))

            def do_DELETE(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self._injected("DELETE"):
                    return
                name = urllib.parse.urlparse(self.path).path.rsplit("/", 1)[-1]
                if name not in fake.objects:
                    return self._send(404, {"kind": "Status", "code": 404})
                fake.deleted.append((name, body))
                fake.objects[name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                return self._send(200, fake.objects[name])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def create(self, body):
        assert "name" not in body["metadata"]
        name = body["metadata"]["generateName"] + f"{len(self.created):05d}"
        stored = json.loads(json.dumps(body))
        stored["metadata"]["name"] = name
        created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=self.age_s)
        stored["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.created.append(stored)
        self.objects[name] = stored
        return stored

    def read(self, name):
        obj = self.objects[name]
        if "deletionTimestamp" in obj["metadata"]:
            n = self.reads[name] = self.reads.get(name, 0) + 1
            if n >= 2:
                del self.objects[name]
            return obj
        if obj in self.created:
            n = self.reads[name] = self.reads.get(name, 0) + 1
            final = self.final or ("Running", "RUNNING")
            obj["status"] = ({"jobDeploymentStatus": "Initializing"} if n < 2 else
                             {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"} if n < 4 else
                             {"jobDeploymentStatus": final[0], "jobStatus": final[1]})
        return obj

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def kube():
    server = FakeKube()
    yield server
    server.close()


def test_run_from_template_is_a_running_copy_owned_by_the_job():
    template = the_template()
    run = launcher.run_from_template(template, {"name": "gpa-transcribe-nightly-29000000", "uid": "job-uid"})
    meta = run["metadata"]
    assert meta["generateName"] == "gpa-transcribe-nightly-" and "name" not in meta
    assert meta["namespace"] == NAMESPACE
    assert "gpa-batch/deploy" not in meta["labels"], "runs must not look like leftovers to apply --prune"
    assert meta["labels"]["gpa-batch/template"] == "gpa-transcribe-nightly-template"
    assert meta["labels"]["gpa-batch/owner-job-uid"] == "job-uid"
    assert meta["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job",
                                        "name": "gpa-transcribe-nightly-29000000", "uid": "job-uid",
                                        "blockOwnerDeletion": False}]
    assert "uid" not in meta and "resourceVersion" not in meta and "status" not in run
    assert run["spec"]["suspend"] is False
    assert {k: v for k, v in run["spec"].items() if k != "suspend"} == \
        {k: v for k, v in template["spec"].items() if k != "suspend"}
    assert template["spec"]["suspend"] is True, "the template object is not modified"


def test_launch_and_wait_until_success(kube, monkeypatch, capsys):
    monkeypatch.setenv("OWNER_JOB_NAME", "gpa-transcribe-nightly-1")
    monkeypatch.setenv("OWNER_JOB_UID", "uid-1")
    code = launcher.main(["--template", "gpa-transcribe-nightly-template", "--wait", "--poll-s", "0.01",
                          "--api-server", kube.url, "--namespace", NAMESPACE])
    assert code == 0
    (run,) = kube.created
    assert run["spec"]["suspend"] is False
    out = capsys.readouterr().out
    assert f"rayjob/{run['metadata']['name']} started" in out
    assert "deployment=Running job=RUNNING" in out and "succeeded" in out


def test_a_retried_pod_waits_on_the_run_its_job_already_started(kube, monkeypatch):
    monkeypatch.setenv("OWNER_JOB_NAME", "gpa-transcribe-nightly-2")
    monkeypatch.setenv("OWNER_JOB_UID", "uid-2")
    args = ["--template", "gpa-transcribe-nightly-template", "--api-server", kube.url, "--namespace", NAMESPACE]
    assert launcher.main(args) == 0
    assert launcher.main([*args, "--wait", "--poll-s", "0.01"]) == 0
    assert len(kube.created) == 1
    monkeypatch.setenv("OWNER_JOB_UID", "uid-3")  # the next night: a new Job, a new run
    assert launcher.main(args) == 0
    assert len(kube.created) == 2


def test_a_failed_run_fails_the_pod(monkeypatch):
    kube = FakeKube(final=("Failed", "FAILED"))
    try:
        monkeypatch.delenv("OWNER_JOB_UID", raising=False)
        code = launcher.main(["--template", "gpa-transcribe-nightly-template", "--wait", "--poll-s", "0.01",
                              "--api-server", kube.url, "--namespace", NAMESPACE])
    finally:
        kube.close()
    assert code == 1
    assert "ownerReferences" not in kube.created[0]["metadata"]


@pytest.mark.parametrize("status, expected", [
    ({}, None), ({"jobDeploymentStatus": "Running", "jobStatus": "SUCCEEDED"}, None),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, True),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, False),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"}, False),
    ({"jobDeploymentStatus": "ValidationFailed"}, False),
])
def test_terminal_states(status, expected):
    assert launcher.run_succeeded({"status": status}) is expected


ARGS = ["--template", "gpa-transcribe-nightly-template", "--namespace", NAMESPACE, "--poll-s", "0.01"]


@pytest.mark.parametrize("method, code", [("GET", 403), ("GET", 401), ("POST", 422)])
def test_a_refusal_is_fatal_with_one_clear_line(kube, monkeypatch, capsys, method, code):
    """4xx: RBAC, credentials or an invalid object; asking again cannot help, so it is not retried."""
    monkeypatch.setenv("OWNER_JOB_NAME", "gpa-transcribe-nightly-4")
    monkeypatch.setenv("OWNER_JOB_UID", "uid-4")
    kube.errors = [(method, code)] * 5
    code_ = launcher.main([*ARGS, "--wait", "--api-server", kube.url])
    err = capsys.readouterr().err
    assert code_ == 2
    (line,) = err.strip().splitlines()
    assert f"HTTP {code}" in line and f"injected {code}" in line and "/rayjobs" in line
    assert len(kube.errors) == 4, "a refused request is asked once"
    assert kube.created == []


def test_a_missing_template_is_fatal(kube, monkeypatch, capsys):
    monkeypatch.delenv("OWNER_JOB_UID", raising=False)
    code = launcher.main(["--template", "no-such-template", "--namespace", NAMESPACE, "--api-server", kube.url])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "HTTP 404" in err and "no-such-template" in err and len(err.splitlines()) == 1


def test_server_errors_and_timeouts_are_retried(kube, monkeypatch, capsys):
    monkeypatch.setenv("OWNER_JOB_NAME", "gpa-transcribe-nightly-5")
    monkeypatch.setenv("OWNER_JOB_UID", "uid-5")
    kube.errors = [("GET", 503), ("GET", 500), ("POST", 429), ("GET", 504), ("GET", 408)]
    assert launcher.main([*ARGS, "--wait", "--deadline-s", "60", "--api-server", kube.url]) == 0
    assert kube.errors == [], "every injected error was met and retried"
    assert len(kube.created) == 1, "a retried create lists by owner first: one run"
    out = capsys.readouterr().out
    assert "API error" in out and "succeeded" in out


def test_an_unreachable_api_server_is_retried_until_the_deadline(monkeypatch, capsys):
    monkeypatch.delenv("OWNER_JOB_UID", raising=False)
    from jobs_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    started = time.monotonic()
    code = launcher.main([*ARGS, "--wait", "--deadline-s", "0.3", "--api-server", url])
    assert code == 1 and 0.3 <= time.monotonic() - started < 10
    assert "kept failing until the deadline" in capsys.readouterr().err


def test_a_run_past_its_deadline_is_deleted_and_awaited(monkeypatch, capsys):
    """A run that never ends: at the deadline the launcher deletes its RayJob (foreground: cluster first) and
    returns only once it is gone, so the CronJob's Forbid still means one run at a time."""
    kube = FakeKube(final=None)
    try:
        monkeypatch.setenv("OWNER_JOB_NAME", "gpa-transcribe-nightly-6")
        monkeypatch.setenv("OWNER_JOB_UID", "uid-6")
        started = time.monotonic()
        code = launcher.main([*ARGS, "--wait", "--deadline-s", "1", "--api-server", kube.url])
        elapsed = time.monotonic() - started
    finally:
        kube.close()
    assert code == 1
    (run,) = kube.created
    name = run["metadata"]["name"]
    assert kube.deleted == [(name, {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"})]
    assert name not in kube.objects, "returned before the RayJob was gone"
    assert elapsed < 10
    out = capsys.readouterr().out
    assert f"rayjob/{name} deleted: run stopped at its deadline" in out


def test_the_deadline_counts_from_the_run_not_from_the_pod(monkeypatch, capsys):
    """A relaunched pod (the first was evicted) inherits the run's deadline: it counts from the RayJob's
    creation, so pod retries cannot stretch a run the way KubeRay's own retries stretch activeDeadlineSeconds."""
    kube = FakeKube(final=None, age_s=3600)
    try:
        monkeypatch.setenv("OWNER_JOB_NAME", "gpa-transcribe-nightly-7")
        monkeypatch.setenv("OWNER_JOB_UID", "uid-7")
        assert launcher.main([*ARGS, "--api-server", kube.url]) == 0  # the first pod started the run
        code = launcher.main([*ARGS, "--wait", "--deadline-s", "1800", "--api-server", kube.url])
    finally:
        kube.close()
    assert code == 1 and len(kube.created) == 1
    assert [name for name, _ in kube.deleted] == [kube.created[0]["metadata"]["name"]]
