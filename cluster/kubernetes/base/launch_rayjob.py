"""Start one run of a scheduled RayJob from a suspended template, and optionally wait for it to finish.

Run by the nightly CronJob (nightly-cronjob.yaml) where KubeRay's RayCronJob feature gate is off. Standard
library only, so any small Python image runs it; it talks to the Kubernetes API with the pod's ServiceAccount.

The new RayJob is a copy of the template's spec with ``suspend: false``, a generated name
(``<template minus -template>-xxxxx``) and the Kubernetes Job running this pod as its owner: deleting old
Jobs (the CronJob's history limits) deletes their RayJobs and clusters. A retried pod of the same Job finds
the RayJob it created before (by the owner label) and waits on it instead of starting a second one.

With ``--deadline-s`` the run has one deadline, counted from its RayJob's creation, whatever KubeRay's retries
do (each retry restarts the RayJob's own activeDeadlineSeconds): past it the RayJob is deleted, and this script
waits until it (with its cluster) is gone before it exits, so the CronJob never sees two runs at once.

Kubernetes API answers: 4xx (forbidden, not found, invalid) are fatal, reported in one line, exit code 2;
5xx, 408, 429, timeouts and dropped connections are retried until the deadline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
OWNER_LABEL = "gpa-batch/owner-job-uid"
TEMPLATE_LABEL = "gpa-batch/template"
# Labels of the template that must not reach the runs: `kubectl apply --prune -l gpa-batch/deploy=...` would
# otherwise treat every run as a leftover of the manifests and delete it.
DROPPED_LABELS = ("gpa-batch/deploy",)
TERMINAL_STATES = ("Complete", "Failed", "ValidationFailed")
RETRIED_HTTP_CODES = (408, 429)  # request timeout, throttled: worth asking again, like any 5xx
T = TypeVar("T")


class APIRefused(Exception):
    """A 4xx answer from the API server: asking again cannot help (RBAC, a missing template, an invalid object)."""

    def __init__(self, method: str, path: str, code: int, reason: str):
        super().__init__(f"{method} {path}: HTTP {code} {reason}")
        self.code = code


class DeadlineExceeded(Exception):
    pass


def is_transient(exc: BaseException) -> bool:
    """An API server hiccup (5xx, throttling, timeout, connection dropped), as opposed to a refusal."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in RETRIED_HTTP_CODES
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))


def _refusal_reason(exc: urllib.error.HTTPError) -> str:
    """The API server's own words from its Status body (e.g. what RBAC denied), else the HTTP reason."""
    try:
        status = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        status = {}
    message = status.get("message") if isinstance(status, dict) else None
    return f"{exc.reason}: {message}" if message else str(exc.reason)


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
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if is_transient(exc):
                raise
            raise APIRefused(method, path.split("?")[0], exc.code, _refusal_reason(exc)) from None

    def _rayjobs(self) -> str:
        return f"/apis/ray.io/v1/namespaces/{self.namespace}/rayjobs"

    def get_rayjob(self, name: str) -> dict:
        return self._call("GET", f"{self._rayjobs()}/{name}")

    def list_rayjobs(self, label_selector: str) -> list[dict]:
        query = urllib.request.quote(label_selector, safe="")
        return self._call("GET", f"{self._rayjobs()}?labelSelector={query}").get("items", [])

    def create_rayjob(self, body: dict) -> dict:
        return self._call("POST", self._rayjobs(), body)

    def delete_rayjob(self, name: str) -> dict:
        # Foreground: the RayJob stays (with a deletionTimestamp) until its cluster and submitter are gone.
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}
        return self._call("DELETE", f"{self._rayjobs()}/{name}", body)


def retrying(call: Callable[[], T], deadline: float, poll_s: float, what: str, log=print) -> T:
    """``call()``, asked again after transient API errors until ``deadline`` (time.time())."""
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.time() >= deadline:
                raise DeadlineExceeded(f"{what}: the API server kept failing until the deadline ({exc})") from None
            log(f"{what}: API error ({exc}); retrying")
            time.sleep(max(0.0, min(poll_s, deadline - time.time())))


def created_at(rayjob: dict) -> float:
    """The RayJob's creation time (seconds since the epoch): where the run's deadline counts from."""
    stamp = rayjob["metadata"]["creationTimestamp"]
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


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


def launch(api: KubeAPI, template_name: str, owner: dict | None) -> dict:
    """Create this run's RayJob (or find the one an earlier attempt of the same Job created) and return it."""
    if owner:
        existing = api.list_rayjobs(f"{OWNER_LABEL}={owner['uid']}")
        if existing:
            return existing[0]
    template = api.get_rayjob(template_name)
    return api.create_rayjob(run_from_template(template, owner))


def wait(api: KubeAPI, name: str, poll_s: float, deadline: float, log=print) -> bool:
    """Poll the RayJob until it ends (True: succeeded); past ``deadline`` raise DeadlineExceeded."""
    last = None
    while True:
        rayjob = retrying(lambda: api.get_rayjob(name), deadline, poll_s, name, log)
        status = rayjob.get("status") or {}
        state = (status.get("jobDeploymentStatus"), status.get("jobStatus"))
        if state != last:
            log(f"{name}: deployment={state[0] or '-'} job={state[1] or '-'}")
            last = state
        done = run_succeeded(rayjob)
        if done is not None:
            return done
        if time.time() >= deadline:
            raise DeadlineExceeded(f"rayjob/{name} still running at its deadline")
        time.sleep(max(0.0, min(poll_s, deadline - time.time())))


def delete_and_wait(api: KubeAPI, name: str, poll_s: float, timeout_s: float, log=print) -> bool:
    """Delete the RayJob and wait until the API server no longer has it; False if it outlived ``timeout_s``."""
    until = time.time() + timeout_s
    try:
        retrying(lambda: api.delete_rayjob(name), until, poll_s, f"delete {name}", log)
        while time.time() < until:
            retrying(lambda: api.get_rayjob(name), until, poll_s, name, log)
            time.sleep(poll_s)
    except APIRefused as exc:
        if exc.code == 404:
            return True
        raise
    except DeadlineExceeded:
        pass
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", required=True, help="name of the suspended RayJob to copy")
    parser.add_argument("--wait", action="store_true", help="wait for the run; exit 1 unless it succeeded")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="with --wait: delete the run this many seconds after its RayJob was created")
    parser.add_argument("--delete-wait-s", type=float, default=600.0,
                        help="how long to wait for a deleted run's RayJob and cluster to disappear")
    parser.add_argument("--poll-s", type=float, default=30.0)
    parser.add_argument("--api-server", help="API server URL (default: in-cluster configuration)")
    parser.add_argument("--namespace", default="default", help="with --api-server")
    args = parser.parse_args(argv)

    api = KubeAPI(args.api_server, None, None, args.namespace) if args.api_server else KubeAPI.in_cluster()
    owner = None
    if os.environ.get("OWNER_JOB_UID") and os.environ.get("OWNER_JOB_NAME"):
        owner = {"name": os.environ["OWNER_JOB_NAME"], "uid": os.environ["OWNER_JOB_UID"]}
    log = lambda line: print(line, flush=True)  # noqa: E731
    budget = args.deadline_s if args.deadline_s is not None else float("inf")
    try:
        rayjob = retrying(lambda: launch(api, args.template, owner), time.time() + budget, args.poll_s,
                          f"start from {args.template}", log)
        name = rayjob["metadata"]["name"]
        log(f"rayjob/{name} started from {args.template}")
        if not args.wait:
            return 0
        deadline = created_at(rayjob) + budget if args.deadline_s is not None else budget
        try:
            ok = wait(api, name, args.poll_s, deadline, log)
        except DeadlineExceeded as exc:
            log(f"{exc}; deleting rayjob/{name} (deadline {args.deadline_s:.0f} s from its creation)")
            gone = delete_and_wait(api, name, args.poll_s, args.delete_wait_s, log)
            log(f"rayjob/{name} {'deleted' if gone else 'still being deleted'}: run stopped at its deadline")
            return 1
    except APIRefused as exc:
        print(f"launch_rayjob: the Kubernetes API refused {exc}", file=sys.stderr, flush=True)
        return 2
    except DeadlineExceeded as exc:
        print(f"launch_rayjob: {exc}", file=sys.stderr, flush=True)
        return 1
    log(f"rayjob/{name} {'succeeded' if ok else 'failed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
