"""The KubeRay manifests (cluster/kubernetes): rendered with kustomize, validated against schemas, checked for the
rules the KubeRay operator enforces at run time, and every job command parsed by the CLI's own parser.

Offline: kustomize is the one built into kubectl; Kubernetes' schemas come from the kubernetes-validate package;
the ray.io schemas are our transcription of the KubeRay v1.6.2 CRDs (tests/data/cluster, see its header).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "cluster" / "kubernetes"
OVERLAYS = sorted(p.parent for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
RENDERED = [KUBE / "base", *OVERLAYS]
CRD_SCHEMA = ROOT / "tests" / "data" / "cluster" / "kuberay-v1.6.2.schema.yaml"
# Oldest Kubernetes we claim (CronJob timeZone and the batch.kubernetes.io/* pod labels need >= 1.27) and the
# newest the installed kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", "latest")
RAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
DEPLOY_LABEL = "gpa-batch/deploy"
UNITS = ("cluster", "transcribe", "synthesize", "convert", "nightly-raycronjob", "nightly-cronjob")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The longest a run may hold a cluster, retries included (docs/cluster.md): KubeRay restarts a RayJob's
# activeDeadlineSeconds with each retry, so (backoffLimit + 1) x activeDeadlineSeconds must stay within it.
RUN_DEADLINE_S = 12 * 3600
# Secrets the site creates itself (docs/cluster.md shows how); the manifests only refer to them.
USER_SECRETS = {"gpa-batch-s3-keys"}


# --- rendering ---------------------------------------------------------------------------------------------------


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        message = "kubectl (with its built-in kustomize) is needed to render cluster/kubernetes"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@functools.cache
def _render_cached(path: str) -> tuple:
    out = subprocess.run([shutil.which("kubectl"), "kustomize", path], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(path: Path) -> list[dict]:
    _kubectl()
    return [yaml.safe_load(yaml.safe_dump(d)) for d in _render_cached(str(path))]  # a fresh copy per caller


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of a RayCluster, RayJob or RayCronJob."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] == "RayCluster":
        return [(name, doc["spec"])]
    if doc["kind"] == "RayJob":
        return [(name, doc["spec"]["rayClusterSpec"])]
    if doc["kind"] == "RayCronJob":
        return [(name, doc["spec"]["jobTemplate"]["rayClusterSpec"])]
    return []


def job_specs(doc: dict) -> list[tuple[str, dict]]:
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] == "RayJob":
        return [(name, doc["spec"])]
    if doc["kind"] == "RayCronJob":
        return [(name, doc["spec"]["jobTemplate"])]
    return []


def all_entrypoints() -> list[tuple[str, str]]:
    """(where, command) of every job command we ship: manifests, the ray-up script, the docs."""
    found = []
    for path in RENDERED:
        for doc in render(path):
            for where, spec in job_specs(doc):
                found.append((f"{path.relative_to(ROOT)}: {where}", spec["entrypoint"]))
    script = ROOT / "cluster" / "vm" / "submit-nightly.sh"
    dry = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "GPA_DRY_RUN": "1"}, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    found.append(("cluster/vm/submit-nightly.sh", dry.stdout.strip()))
    docs = ROOT / "docs" / "cluster.md"
    if docs.exists():
        for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", docs.read_text(), flags=re.S):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                match = re.search(r"(?:^|\s--\s+|^\$\s+)(gpa-batch\s+(?:transcribe|synthesize|convert)\b.*)$", line)
                if match:
                    found.append(("docs/cluster.md", match.group(1).strip()))
    return found


# --- schema validation -------------------------------------------------------------------------------------------


def _kubernetes_validate():
    """Kubernetes' own JSON schemas for every version, shipped inside the package (no network)."""
    return pytest.importorskip("kubernetes_validate.utils", reason="pip install kubernetes-validate")


@functools.cache
def _crd_validator(k8s_version: str):
    from referencing import Registry, Resource

    kv = _kubernetes_validate()
    version = kv.latest_version() if k8s_version == "latest" else k8s_version
    definitions = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    schema = yaml.safe_load(CRD_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    registry = Registry().with_resources([
        (definitions["$id"], Resource.from_contents(definitions)),
        (schema["$id"], Resource.from_contents(schema)),
    ])
    return {kind: jsonschema.Draft202012Validator({"$ref": f"{schema['$id']}#/$defs/{kind}"}, registry=registry)
            for kind in RAY_KINDS}


def validate(doc: dict, k8s_version: str) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` is valid for its kind."""
    if doc["apiVersion"].startswith("ray.io/"):
        assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
        _crd_validator(k8s_version)[doc["kind"]].validate(doc)
    else:
        kv = _kubernetes_validate()
        version = kv.latest_version() if k8s_version == "latest" else k8s_version
        kv.validate(doc, version, strict=True)


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(KUBE)))
def test_every_rendered_object_validates(path, k8s_version):
    docs = render(path)
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob", "ServiceAccount", "Role", "RoleBinding",
            "ConfigMap"} <= kinds
    for doc in docs:
        try:
            validate(doc, k8s_version)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True), "misspelt field"),
    (lambda d: d["spec"].__setitem__("backoffLimit", "2"), "string for an int32"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "missing groupName"),
    (lambda d: d["spec"]["rayClusterSpec"]["autoscalerOptions"].__setitem__("upscalingMode", "Fast"), "bad enum"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
     .__setitem__("imagePullPolicy", 3), "bad pod template (Kubernetes schema)"),
    (lambda d: d["spec"]["rayClusterSpec"].__setitem__("networkPolicy", {}), "a KubeRay 1.7-only field"),
])
def test_schemas_reject_broken_manifests(mutate, why):
    job = by_kind(render(KUBE / "base"), "RayJob")["gpa-transcribe"]
    validate(job, "latest")
    mutate(job)
    with pytest.raises(jsonschema.ValidationError):
        validate(job, "latest")


def test_kubernetes_schemas_reject_a_broken_cronjob():
    cron = by_kind(render(KUBE / "base"), "CronJob")["gpa-transcribe-nightly"]
    cron["spec"]["concurrencyPolicy"] = 7
    with pytest.raises(jsonschema.ValidationError):
        validate(cron, "latest")


# --- what the operator checks at run time (KubeRay's controller validation, as of v1.6) ---------------------------


def kuberay_problems(doc: dict) -> list[str]:
    """Our re-statement of the checks KubeRay's controller runs before it acts on an object."""
    problems = []
    kind, name = doc["kind"], doc["metadata"]["name"]
    limit = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 41}.get(kind)
    if limit and (len(name) > limit or not DNS1035.match(name)):
        problems.append(f"{kind} name {name!r}: DNS-1035 label of at most {limit} characters")
    for where, spec in job_specs(doc):
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            problems.append(f"{where}: suspend needs shutdownAfterJobFinishes")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
            problems.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
        if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
            problems.append(f"{where}: activeDeadlineSeconds must be positive")
        if spec.get("backoffLimit", 0) < 0:
            problems.append(f"{where}: negative backoffLimit")
        problems += deletion_strategy_problems(where, spec, in_raycronjob=doc["kind"] == "RayCronJob")
        if not isinstance(yaml.safe_load(spec.get("runtimeEnvYAML") or "{}"), dict):
            problems.append(f"{where}: runtimeEnvYAML is not a YAML mapping")
    for where, spec in cluster_specs(doc):
        autoscaling = spec.get("enableInTreeAutoscaling", False)
        v2 = (spec.get("autoscalerOptions") or {}).get("version") == "v2"
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        for group_name, group in groups:
            pod = group["template"]["spec"]
            if not pod.get("containers"):
                problems.append(f"{where} {group_name}: no container")
            params = group.get("rayStartParams") or {}
            if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
                problems.append(f"{where} {group_name}: resources in both rayStartParams and resources")
            if "labels" in params:
                problems.append(f"{where} {group_name}: rayStartParams labels are not supported")
            if autoscaling and v2 and pod.get("restartPolicy", "Never") != "Never":
                problems.append(f"{where} {group_name}: autoscaler v2 needs restartPolicy Never or unset")
            if group_name != "head":
                if group["minReplicas"] > group["maxReplicas"]:
                    problems.append(f"{where} {group_name}: minReplicas > maxReplicas")
                if group.get("suspend"):
                    problems.append(f"{where} {group_name}: suspended worker group")
    return problems


def operator_gates() -> dict[str, bool]:
    values = yaml.safe_load((KUBE / "kuberay-operator-values.yaml").read_text())
    return {g["name"]: g["enabled"] for g in values["featureGates"]}


def deletion_strategy_problems(where: str, spec: dict, in_raycronjob: bool) -> list[str]:
    """KubeRay's checks of deletionStrategy.deletionRules (RayJobDeletionPolicy feature gate, as of v1.6)."""
    strategy = spec.get("deletionStrategy")
    if not strategy:
        return []
    problems = []
    # The one-off RayJobs must run on an operator installed with the chart's defaults; the RayCronJob already
    # needs our values file, which also switches this gate on.
    if not in_raycronjob or not operator_gates().get("RayJobDeletionPolicy"):
        problems.append(f"{where}: deletionStrategy needs the RayJobDeletionPolicy feature gate")
    rules = strategy.get("deletionRules") or []
    if ("onSuccess" in strategy or "onFailure" in strategy) and rules:
        problems.append(f"{where}: onSuccess/onFailure and deletionRules are mutually exclusive")
    if rules and spec.get("shutdownAfterJobFinishes"):
        problems.append(f"{where}: deletionRules and shutdownAfterJobFinishes are mutually exclusive")
    seen, ttls = set(), {}
    for rule in rules:
        condition = rule["condition"]
        if ("jobStatus" in condition) == ("jobDeploymentStatus" in condition):
            problems.append(f"{where}: a deletion rule needs exactly one of jobStatus, jobDeploymentStatus")
        key = (condition.get("jobStatus") or condition.get("jobDeploymentStatus"), rule["policy"])
        if key in seen:
            problems.append(f"{where}: deletion rule {key} given twice")
        seen.add(key)
        ttls.setdefault(key[0], {})[rule["policy"]] = condition.get("ttlSeconds", 0)
    order = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")
    for status, by_policy in ttls.items():
        steps = [by_policy[p] for p in order if p in by_policy]
        if steps != sorted(steps):
            problems.append(f"{where}: deletion TTLs for {status} must grow DeleteWorkers -> DeleteCluster -> Self")
        if "DeleteWorkers" in by_policy and spec.get("rayClusterSpec", {}).get("enableInTreeAutoscaling"):
            problems.append(f"{where}: DeleteWorkers cannot be used with autoscaling")
    return problems


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(KUBE)))
def test_kuberay_would_accept_every_object(path):
    problems = [p for doc in render(path) for p in kuberay_problems(doc)]
    assert problems == []


def test_kuberay_checks_catch_what_the_operator_refuses():
    job = by_kind(render(KUBE / "base"), "RayJob")["gpa-transcribe"]
    job["spec"]["shutdownAfterJobFinishes"] = False
    job["metadata"]["name"] = "x" * 48
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["minReplicas"] = 99
    found = "\n".join(kuberay_problems(job))
    assert "ttlSecondsAfterFinished needs shutdownAfterJobFinishes" in found
    assert "at most 47 characters" in found
    assert "minReplicas > maxReplicas" in found

    cron = by_kind(render(KUBE / "base"), "RayCronJob")["gpa-transcribe-nightly"]
    template = cron["spec"]["jobTemplate"]
    template["shutdownAfterJobFinishes"] = True
    template["deletionStrategy"]["deletionRules"][1]["condition"]["ttlSeconds"] = 1  # DeleteSelf before the cluster
    found = "\n".join(kuberay_problems(cron))
    assert "mutually exclusive" in found and "must grow" in found
    assert "feature gate" in "\n".join(deletion_strategy_problems("RayJob/x", template, in_raycronjob=False))


# --- the shape of the deployment ---------------------------------------------------------------------------------


def gpu_group(spec: dict) -> dict:
    (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    return group


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(KUBE)))
def test_cluster_shape_and_job_lifecycle(path):
    docs = render(path)
    (cluster,) = by_kind(docs, "RayCluster").values()
    shapes = [spec for doc in docs for _, spec in cluster_specs(doc)]
    assert len(shapes) == 6  # the RayCluster, 4 RayJobs (3 kinds + the nightly template), 1 RayCronJob
    assert all(shape == cluster["spec"] for shape in shapes), "components/cluster-spec did not copy the shape"

    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu", "gpu"]
    gpu = gpu_group(spec)
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1, "GPU workers scale from zero"
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in gpu["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["gpa-cache"], "the checkpoint cache is node-local"
    env = by_kind(docs, "ConfigMap")["gpa-batch-env"]["data"]
    assert env["GPA_CACHE_DIR"].startswith(mounts["gpa-cache"] + "/")
    assert env["HF_HOME"].startswith(mounts["gpa-cache"] + "/")
    for doc in docs:
        for where, job in job_specs(doc):
            assert cluster_deleted_after_every_end(job), f"{where}: a finished run keeps its cluster"
            assert job["activeDeadlineSeconds"] > 0, where
            assert (job.get("backoffLimit", 0) + 1) * job["activeDeadlineSeconds"] <= RUN_DEADLINE_S, \
                f"{where}: retries can hold the cluster past {RUN_DEADLINE_S} s"
            assert "env_vars" in yaml.safe_load(job["runtimeEnvYAML"]), where


def cluster_deleted_after_every_end(job: dict) -> bool:
    """Whether the RayJob's cluster goes away after the job ends, however it ends."""
    if job.get("shutdownAfterJobFinishes"):
        return job.get("ttlSecondsAfterFinished", 0) >= 0
    rules = (job.get("deletionStrategy") or {}).get("deletionRules") or []
    covered = {rule["condition"].get("jobStatus") or rule["condition"].get("jobDeploymentStatus")
               for rule in rules if rule["policy"] in ("DeleteCluster", "DeleteSelf")}
    return {"SUCCEEDED", "FAILED", "Failed"} <= covered


def test_raycronjob_history_is_bounded():
    """RayCronJob has no history limit: each run's RayJob (with its submitter Job) must delete itself."""
    cron = by_kind(render(KUBE / "base"), "RayCronJob")["gpa-transcribe-nightly"]
    rules = cron["spec"]["jobTemplate"]["deletionStrategy"]["deletionRules"]
    deletes_self = {rule["condition"].get("jobStatus") or rule["condition"].get("jobDeploymentStatus")
                    for rule in rules if rule["policy"] == "DeleteSelf"}
    assert deletes_self == {"SUCCEEDED", "FAILED", "Failed"}
    assert all(rule["condition"]["ttlSeconds"] <= 7 * 86400 for rule in rules)
    assert cron["spec"]["jobTemplate"]["backoffLimit"] == 0, "one attempt: its deadline is the run's deadline"
    assert operator_gates()["RayJobDeletionPolicy"] is True


def test_the_raycronjob_comment_tells_what_overlapping_runs_do():
    header = (KUBE / "base" / "nightly-raycronjob.yaml").read_text().split("apiVersion:")[0]
    text = " ".join(header.replace("#", " ").split())
    assert "both run" not in text
    assert "finds the output's lease held" in text and "stops at once" in text


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(KUBE)))
def test_scheduled_runs(path):
    docs = render(path)
    raycron = by_kind(docs, "RayCronJob")["gpa-transcribe-nightly"]
    cron = by_kind(docs, "CronJob")["gpa-transcribe-nightly"]
    for schedule in (raycron["spec"]["schedule"], cron["spec"]["schedule"]):
        fields = schedule.split()
        assert len(fields) == 5 and all(re.fullmatch(r"[0-9*/,-]+", f) for f in fields), schedule
    assert raycron["spec"]["schedule"] == cron["spec"]["schedule"]

    # The CronJob fallback: never two runs at once, and its launcher has what it needs.
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    template_name = container["command"][container["command"].index("--template") + 1]
    template = by_kind(docs, "RayJob")[template_name]
    assert template["spec"]["suspend"] is True, "the template itself must never run"
    assert template["spec"]["entrypoint"] == raycron["spec"]["jobTemplate"]["entrypoint"]
    command = container["command"]
    deadline_s = float(command[command.index("--deadline-s") + 1])
    delete_wait_s = float(command[command.index("--delete-wait-s") + 1])
    assert deadline_s == RUN_DEADLINE_S, "the launcher enforces the run deadline the docs state"
    spec = template["spec"]
    assert (spec["backoffLimit"] + 1) * spec["activeDeadlineSeconds"] <= deadline_s
    assert job["activeDeadlineSeconds"] > deadline_s + delete_wait_s, "the launcher outlives its run's deletion"
    assert len(template_name.removesuffix("-template")) + 1 <= 42, "generateName prefix + 5 chars <= 47"
    (volume,) = pod["volumes"]
    script = by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]["data"]["launch_rayjob.py"]
    assert script == (KUBE / "base" / "launch_rayjob.py").read_text()
    assert container["command"][1] == f"{container['volumeMounts'][0]['mountPath']}/launch_rayjob.py"

    # RBAC: exactly what the launcher calls, bound to the ServiceAccount the pod runs as.
    role = by_kind(docs, "Role")["gpa-batch-launcher"]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                              "verbs": ["get", "list", "create", "delete"]}]
    binding = by_kind(docs, "RoleBinding")["gpa-batch-launcher"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": binding["metadata"]["namespace"]}]
    assert pod["serviceAccountName"] in by_kind(docs, "ServiceAccount")


def references(doc: dict) -> set[tuple[str, str]]:
    """(kind, name) of the ServiceAccounts, ConfigMaps, Roles and RayJobs an object needs to exist."""
    needed = set()

    def walk(node):
        if isinstance(node, dict):
            if "serviceAccountName" in node:
                needed.add(("ServiceAccount", node["serviceAccountName"]))
            for key in ("configMapRef", "configMap"):
                if isinstance(node.get(key), dict) and "name" in node[key]:
                    needed.add(("ConfigMap", node[key]["name"]))
            for key in ("secretRef", "secretKeyRef", "secret"):
                if isinstance(node.get(key), dict):
                    needed.add(("Secret", node[key].get("name") or node[key].get("secretName")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.get("spec"))
    if doc["kind"] == "RoleBinding":
        needed.add((doc["roleRef"]["kind"], doc["roleRef"]["name"]))
        needed |= {(s["kind"], s["name"]) for s in doc["subjects"]}
    if doc["kind"] == "CronJob":
        command = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
        needed.add(("RayJob", command[command.index("--template") + 1]))
    return needed


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(KUBE)))
def test_each_deploy_unit_is_self_contained(path, unit):
    """`kubectl apply -k <overlay> -l 'gpa-batch/deploy in (shared,<unit>)'` brings everything the unit needs."""
    docs = render(path)
    assert {d["metadata"]["labels"].get(DEPLOY_LABEL) for d in docs} == {"shared", *UNITS}
    selected = [d for d in docs if d["metadata"]["labels"][DEPLOY_LABEL] in ("shared", unit)]
    present = {(d["kind"], d["metadata"]["name"]) for d in selected}
    assert any(d["metadata"]["labels"][DEPLOY_LABEL] == unit for d in selected)
    missing = {ref for d in selected for ref in references(d)} - present
    assert {name for kind, name in missing if kind == "Secret"} <= USER_SECRETS
    assert {(kind, name) for kind, name in missing if kind != "Secret"} == set()
    namespaces = {d["metadata"].get("namespace") for d in selected}
    assert len(namespaces) == 1 and None not in namespaces


def test_overlay_settings_land_where_they_belong():
    for overlay in OVERLAYS:
        docs = render(overlay)
        settings = yaml.safe_load((overlay / "settings.yaml").read_text())
        assert settings["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
        assert "Settings" not in {d["kind"] for d in docs}, "settings must not be sent to the cluster"
        s = settings["spec"]
        for doc in docs:
            for where, job in job_specs(doc):
                argv = shlex.split(job["entrypoint"])
                pairs = zip(argv, [*argv[1:], ""], strict=True)
                flags = {a: b for a, b in pairs if a.startswith("--") and not b.startswith("--")}
                task = argv[1]
                wanted = s["transcribe"] if task == "transcribe" else s[task]
                assert flags["--input"] == wanted["input"] and flags["--output"] == wanted["output"], where
                assert flags["--model"] == s["model"], where
                assert flags["--actors"] == s["pool"]["actors"], where
                assert flags["--gpus-per-actor"] == s["pool"]["gpusPerActor"], where
                assert flags["--batch-size"] == s["pool"]["batchSize"], where
                if task == "transcribe":
                    assert flags["--glob"] == wanted["glob"], where
            for where, spec in cluster_specs(doc):
                gpu = gpu_group(spec)
                assert (gpu["minReplicas"], gpu["maxReplicas"]) == (s["gpu"]["minWorkers"], s["gpu"]["maxWorkers"])
                assert gpu["template"]["spec"]["nodeSelector"] == s["gpu"]["nodeSelector"], where
                assert gpu["template"]["spec"]["tolerations"] == s["gpu"]["tolerations"], where
                (cpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "cpu"]
                assert (cpu["minReplicas"], cpu["maxReplicas"]) == (s["cpu"]["minWorkers"], s["cpu"]["maxWorkers"])
                assert cpu["template"]["spec"]["nodeSelector"] == s["cpu"]["nodeSelector"], where
                assert spec["headGroupSpec"]["template"]["spec"]["nodeSelector"] == s["head"]["nodeSelector"], where
        for kind in ("RayCronJob", "CronJob"):
            assert by_kind(docs, kind)["gpa-transcribe-nightly"]["spec"]["schedule"] == s["schedule"]
        account = by_kind(docs, "ServiceAccount")["gpa-batch"]
        assert account["metadata"]["annotations"] == s["serviceAccountAnnotations"]
        images = {c["image"] for d in docs for c in _containers(d) if c["name"].startswith("ray-")}
        assert len(images) == 1 and not images & {"gpa-batch"}, "the overlay names the pushed image"
        (image,) = images
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")


def _containers(node):
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield from node["containers"]
        for value in node.values():
            yield from _containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _containers(value)


def test_ray_version_matches_the_image():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    base_tag = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-py\d+-cu\d+", dockerfile, re.M).group(1)
    for path in RENDERED:
        for doc in render(path):
            for where, spec in cluster_specs(doc):
                assert spec["rayVersion"] == base_tag, where


# --- every job command parses with the CLI's own parser ----------------------------------------------------------


SHELL_SPECIALS = re.compile(r"[$`;|&<>(){}\\]")


def test_every_entrypoint_parses_with_the_cli():
    """A renamed or removed flag in jobs/cli.py breaks this test, not a nightly run in production."""
    cli = pytest.importorskip("jobs.cli", reason="jobs/cli.py not importable")
    parser = cli.build_parser()
    found = all_entrypoints()
    tasks = {shlex.split(cmd)[1] for _, cmd in found}
    assert tasks == {"transcribe", "synthesize", "convert"}
    assert len(found) >= 2 * 5 + 1  # 4 RayJobs and a RayCronJob per rendering, the ray-up script
    for where, command in found:
        # One shell word per argument: KubeRay hands the entrypoint to bash, then Ray re-quotes it for the job.
        lexer = shlex.shlex(command, posix=False, punctuation_chars=False)
        lexer.whitespace_split = True
        for raw in lexer:
            quoted = raw[0] == raw[-1] and raw[0] in "'\""
            assert quoted or not SHELL_SPECIALS.search(raw), f"{where}: unquoted shell syntax in {raw!r}"
            assert quoted or not re.search(r"[*?\[]", raw), f"{where}: unquoted glob {raw!r} would be expanded"
        argv = shlex.split(command)
        assert argv[0] == "gpa-batch", where
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: the CLI rejects {command!r}")
        config = cli.config_from_args(args.command, args)
        assert config.job == argv[1] and config.input and config.output and config.model, where


def test_operator_values_switch_on_the_raycronjob_gate():
    values = yaml.safe_load((KUBE / "kuberay-operator-values.yaml").read_text())
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates["RayCronJob"] is True
    assert len(gates) == len(values["featureGates"]), "a gate listed twice"


def test_the_docs_tell_how_to_upgrade_the_operators_crds():
    """Helm installs a chart's crds/ on install only: an upgrade from KubeRay 1.5 leaves RayCronJob undefined."""
    docs = (ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", docs, flags=re.S)
    (upgrade,) = [b for b in blocks if "helm upgrade" in b]
    steps = [line.split()[:3] for line in upgrade.replace("\\\n", " ").splitlines() if line.strip()]
    assert ["helm", "pull", "kuberay/kuberay-operator"] in steps
    apply = upgrade.index("kubectl apply --server-side")
    assert "/crds/" in upgrade[apply:].splitlines()[0]
    assert apply < upgrade.index("helm upgrade"), "CRDs before the operator that needs them"
    assert "raycronjobs.ray.io" in upgrade
    values = (KUBE / "kuberay-operator-values.yaml").read_text()
    assert "helm upgrade` never installs or updates CRDs" in values
