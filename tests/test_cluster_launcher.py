"""The CronJob fallback's launcher (cluster/kubernetes/base/launch_rayjob.py) against a fake Kubernetes API
server on 127.0.0.1 that stores RayJobs and moves them through KubeRay's states."""

from __future__ import annotations

import importlib.util
import json
import threading
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
    """Just enough of the API server: GET/list/POST RayJobs in one namespace. A created RayJob reports
    Initializing, then Running, then the final state given to the constructor."""

    def __init__(self, final=("Complete", "SUCCEEDED")):
        self.objects = {"gpa-transcribe-nightly-template": the_template()}
        self.final = final
        self.reads: dict[str, int] = {}
        self.created: list[dict] = []
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

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                prefix = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"
                if url.path == prefix:
                    selector = urllib.parse.parse_qs(url.query).get("labelSelector", [""])[0]
                    key, _, value = selector.partition("=")
                    items = [o for o in fake.objects.values() if o["metadata"].get("labels", {}).get(key) == value]
                    return self._send(200, {"kind": "RayJobList", "items": items})
                name = url.path.removeprefix(prefix + "/")
                if name not in fake.objects:
                    return self._send(404, {"kind": "Status", "code": 404})
                return self._send(200, fake.read(name))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                return self._send(201, fake.create(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def create(self, body):
        assert "name" not in body["metadata"]
        name = body["metadata"]["generateName"] + f"{len(self.created):05d}"
        stored = json.loads(json.dumps(body))
        stored["metadata"]["name"] = name
        self.created.append(stored)
        self.objects[name] = stored
        return stored

    def read(self, name):
        obj = self.objects[name]
        if obj in self.created:
            n = self.reads[name] = self.reads.get(name, 0) + 1
            obj["status"] = ({"jobDeploymentStatus": "Initializing"} if n < 2 else
                             {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"} if n < 4 else
                             {"jobDeploymentStatus": self.final[0], "jobStatus": self.final[1]})
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
