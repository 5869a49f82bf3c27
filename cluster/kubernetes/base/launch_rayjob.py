"""Start one run of a scheduled RayJob from a suspended template, and optionally wait for it to finish.

Run by the nightly CronJob (nightly-cronjob.yaml) where KubeRay's RayCronJob feature gate is off. Standard
library only, so any small Python image runs it; it talks to the Kubernetes API with the pod's ServiceAccount.

The new RayJob is a copy of the template's spec with ``suspend: false``, a generated name
(``<template minus -template>-xxxxx``) and the Kubernetes Job running this pod as its owner: deleting old
Jobs (the CronJob's history limits) deletes their RayJobs and clusters. A retried pod of the same Job finds
the RayJob it created before (by the owner label) and waits on it instead of starting a second one.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
OWNER_LABEL = "gpa-batch/owner-job-uid"
TEMPLATE_LABEL = "gpa-batch/template"
# Labels of the template that must not reach the runs: `kubectl apply --prune -l gpa-batch/deploy=...` would
# otherwise treat every run as a leftover of the manifests and delete it.
DROPPED_LABELS = ("gpa-batch/deploy",)
TERMINAL_STATES = ("Complete", "Failed", "ValidationFailed")


class KubeAPI:
    """The few calls we need against the ``ray.io/v1`` RayJob resource."""

    def __init__(self, server: str, token: str | None, ca_file: str | None, namespace: str):
        self.server = server.rstrip("/")
        self.token = token
        self.namespace = namespace
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @classmethod
    def in_cluster(cls) -> KubeAPI:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        if ":" in host:  # IPv6
            host = f"[{host}]"
        with open(os.path.join(SERVICE_ACCOUNT_DIR, "token")) as f:
            token = f.read().strip()
        with open(os.path.join(SERVICE_ACCOUNT_DIR, "namespace")) as f:
            namespace = f.read().strip()
        return cls(f"https://{host}:{port}", token, os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"), namespace)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            self.server + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
            return json.load(response)

    def _rayjobs(self) -> str:
        return f"/apis/ray.io/v1/namespaces/{self.namespace}/rayjobs"

    def get_rayjob(self, name: str) -> dict:
        return self._call("GET", f"{self._rayjobs()}/{name}")

    def list_rayjobs(self, label_selector: str) -> list[dict]:
        query = urllib.request.quote(label_selector, safe="")
        return self._call("GET", f"{self._rayjobs()}?labelSelector={query}").get("items", [])

    def create_rayjob(self, body: dict) -> dict:
        return self._call("POST", self._rayjobs(), body)


def run_from_template(template: dict, owner: dict | None = None) -> dict:
    """The RayJob to create for one run of ``template`` (a RayJob object as the API returns it)."""
    meta = template["metadata"]
    base = meta["name"].removesuffix("-template")
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in DROPPED_LABELS}
    labels[TEMPLATE_LABEL] = meta["name"]
    metadata: dict[str, Any] = {"generateName": f"{base}-", "namespace": meta.get("namespace"), "labels": labels}
    if owner:
        labels[OWNER_LABEL] = owner["uid"]
        metadata["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": owner["name"],
                                        "uid": owner["uid"], "blockOwnerDeletion": False}]
    spec = json.loads(json.dumps(template["spec"]))  # deep copy
    spec["suspend"] = False
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": spec}


def run_succeeded(rayjob: dict) -> bool | None:
    """True/False once the RayJob reached a terminal state, None while it is still going."""
    status = rayjob.get("status") or {}
    if status.get("jobDeploymentStatus") not in TERMINAL_STATES:
        return None
    return status.get("jobStatus") == "SUCCEEDED"


def launch(api: KubeAPI, template_name: str, owner: dict | None) -> str:
    """Create this run's RayJob (or find the one an earlier attempt of the same Job created); its name."""
    if owner:
        existing = api.list_rayjobs(f"{OWNER_LABEL}={owner['uid']}")
        if existing:
            return existing[0]["metadata"]["name"]
    template = api.get_rayjob(template_name)
    created = api.create_rayjob(run_from_template(template, owner))
    return created["metadata"]["name"]


def wait(api: KubeAPI, name: str, poll_s: float, log=print) -> bool:
    last = None
    while True:
        try:
            rayjob = api.get_rayjob(name)
        except (urllib.error.URLError, TimeoutError) as exc:  # an API server hiccup is not the job failing
            log(f"{name}: API error while waiting ({exc}); retrying")
            time.sleep(poll_s)
            continue
        status = rayjob.get("status") or {}
        state = (status.get("jobDeploymentStatus"), status.get("jobStatus"))
        if state != last:
            log(f"{name}: deployment={state[0] or '-'} job={state[1] or '-'}")
            last = state
        done = run_succeeded(rayjob)
        if done is not None:
            return done
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", required=True, help="name of the suspended RayJob to copy")
    parser.add_argument("--wait", action="store_true", help="wait for the run; exit 1 unless it succeeded")
    parser.add_argument("--poll-s", type=float, default=30.0)
    parser.add_argument("--api-server", help="API server URL (default: in-cluster configuration)")
    parser.add_argument("--namespace", default="default", help="with --api-server")
    args = parser.parse_args(argv)

    api = KubeAPI(args.api_server, None, None, args.namespace) if args.api_server else KubeAPI.in_cluster()
    owner = None
    if os.environ.get("OWNER_JOB_UID") and os.environ.get("OWNER_JOB_NAME"):
        owner = {"name": os.environ["OWNER_JOB_NAME"], "uid": os.environ["OWNER_JOB_UID"]}
    name = launch(api, args.template, owner)
    print(f"rayjob/{name} started from {args.template}", flush=True)
    if not args.wait:
        return 0
    ok = wait(api, name, args.poll_s, log=lambda line: print(line, flush=True))
    print(f"rayjob/{name} {'succeeded' if ok else 'failed'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
