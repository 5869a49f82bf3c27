"""Object-store credentials of the KubeRay overlays (cluster/kubernetes/overlays): each rendered overlay gives
every Ray pod one working way to the buckets its job commands name, and no key is written into a manifest.

Two ways are documented (docs/cluster.md, step 4): IRSA on EKS (an IAM role on the pods' ServiceAccount; the EKS
webhook injects AWS_ROLE_ARN and a token file) and access keys from a Secret the site creates (S3, or Cloud
Storage's S3-compatible XML API with an HMAC key on GKE). botocore, as installed in the image, is asked which
credentials and endpoint it resolves from each overlay's environment.
"""

from __future__ import annotations

import re
import shlex

import pytest
from test_cluster_manifests import (
    KUBE,
    OVERLAYS,
    ROOT,
    USER_SECRETS,
    by_kind,
    cluster_specs,
    job_specs,
    render,
)

IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Environment variables that hold a secret: never a literal value in a manifest, never in a ConfigMap.
SECRET_VARIABLES = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIALS)", re.I)
GCS_XML_API = "https://storage.googleapis.com"


def ray_containers(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(where, pod spec, Ray container) of every head and worker group of every cluster shape."""
    found = []
    for doc in docs:
        for where, spec in cluster_specs(doc):
            groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
            for name, group in groups:
                pod = group["template"]["spec"]
                found.append((f"{where} {name}", pod, pod["containers"][0]))
    return found


def storage_uris(docs: list[dict]) -> set[str]:
    uris = set()
    for doc in docs:
        for _, job in job_specs(doc):
            argv = shlex.split(job["entrypoint"])
            uris |= {argv[i + 1] for i, a in enumerate(argv) if a in ("--input", "--output", "--model")}
    return {u for u in uris if "://" in u}


def environment(docs: list[dict], container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The variables the container starts with: its ConfigMaps and Secrets (envFrom), then its env."""
    configmaps = {name: cm.get("data", {}) for name, cm in by_kind(docs, "ConfigMap").items()}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(secrets.get(source["secretRef"]["name"], {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets.get(ref["name"], {}).get(ref["key"], "")
    return env


def credential_problems(docs: list[dict]) -> list[str]:
    """Why some Ray pod of this rendering could not reach its buckets, or where a secret is written in."""
    problems = []
    for doc in docs:
        if doc["kind"] == "Secret":
            problems.append(f"Secret/{doc['metadata']['name']} is in the manifests: keys must not be committed")
        if doc["kind"] == "ConfigMap":
            inlined = [k for k in doc.get("data", {}) if SECRET_VARIABLES.search(k)]
            if inlined:
                problems.append(f"ConfigMap/{doc['metadata']['name']} holds {inlined}")
    accounts = by_kind(docs, "ServiceAccount")
    schemes = {uri.split("://")[0] for uri in storage_uris(docs)}
    if schemes - {"s3"}:
        problems.append(f"storage schemes {sorted(schemes - {'s3'})}: the image reads object stores through s3fs only")
    for where, pod, container in ray_containers(docs):
        for var in container.get("env", []):
            if "value" in var and SECRET_VARIABLES.search(var["name"]):
                problems.append(f"{where}: {var['name']} is written into the manifest")
        annotations = accounts.get(pod.get("serviceAccountName", "default"), {}).get("metadata", {})
        annotations = annotations.get("annotations") or {}
        irsa = ROLE_ARN.match(annotations.get(IRSA_ANNOTATION, ""))
        secret_refs = {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        key_refs = {v["name"] for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})}
        keys = bool(secret_refs & USER_SECRETS) or set(KEY_VARIABLES) <= key_refs
        if not irsa and not keys:
            problems.append(f"{where}: no S3 credentials (neither an IRSA role on its ServiceAccount nor keys "
                            f"from a Secret)")
        if irsa and keys:
            problems.append(f"{where}: both IRSA and keys: static keys take precedence over the role")
        env = environment(docs, container, {})
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint == GCS_XML_API:
            if not keys:
                problems.append(f"{where}: Cloud Storage's XML API takes HMAC keys; an IAM role cannot sign for it")
            for variable in ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
                if env.get(variable) != "when_required":
                    problems.append(f"{where}: {variable}=when_required is needed with Cloud Storage")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_has_a_credential_path_and_inlines_nothing(overlay):
    docs = render(overlay)
    assert credential_problems(docs) == []
    assert len(ray_containers(docs)) == 18  # 6 cluster shapes x (head, cpu, gpu)
    assert storage_uris(docs), "the overlay names its buckets"


def test_the_checks_catch_a_deployment_that_cannot_read_its_data():
    gke = render(KUBE / "overlays" / "gke")
    (cluster,) = by_kind(gke, "RayCluster").values()
    gpu = cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    gpu["envFrom"] = [s for s in gpu["envFrom"] if "secretRef" not in s]
    gpu.setdefault("env", []).append({"name": "AWS_SECRET_ACCESS_KEY", "value": "written-in"})
    found = "\n".join(credential_problems(gke))
    assert "RayCluster/gpa-batch gpu: no S3 credentials" in found
    assert "AWS_SECRET_ACCESS_KEY is written into the manifest" in found

    # What the GKE example used to be: workload identity on the ServiceAccount, s3:// buckets, no keys.
    eks = render(KUBE / "overlays" / "eks")
    account = by_kind(eks, "ServiceAccount")["gpa-batch"]
    account["metadata"]["annotations"] = {"iam.gke.io/gcp-service-account": "gpa-batch@acme.iam.gserviceaccount.com"}
    assert any("no S3 credentials" in p for p in credential_problems(eks))

    # Keys pasted into the overlay's ConfigMap, or a Secret committed with the manifests.
    eks = render(KUBE / "overlays" / "eks")
    by_kind(eks, "ConfigMap")["gpa-batch-env"]["data"]["AWS_SECRET_ACCESS_KEY"] = "x"
    eks.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gpa-batch-s3-keys"}, "data": {}})
    found = "\n".join(credential_problems(eks))
    assert "ConfigMap/gpa-batch-env holds ['AWS_SECRET_ACCESS_KEY']" in found and "Secret/gpa-batch-s3-keys" in found


def _clean_aws_environment(monkeypatch, tmp_path) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_gke_pods_sign_with_the_secrets_hmac_key_for_cloud_storage(monkeypatch, tmp_path):
    import botocore.session

    from gpa.storage import filesystem

    docs = render(KUBE / "overlays" / "gke")
    secret = {"gpa-batch-s3-keys": {"AWS_ACCESS_KEY_ID": "GOOG1EXAMPLEHMACID", "AWS_SECRET_ACCESS_KEY": "hmac-secret"}}
    _clean_aws_environment(monkeypatch, tmp_path)
    for where, _, container in ray_containers(docs):
        env = environment(docs, container, secret)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        session = botocore.session.get_session()
        credentials = session.get_credentials()
        assert (credentials.method, credentials.access_key) == ("env", "GOOG1EXAMPLEHMACID"), where
        assert session.get_config_variable("request_checksum_calculation") == "when_required", where
        assert session.get_config_variable("response_checksum_validation") == "when_required", where
    fs, _ = filesystem("s3://acme-gcs-models/gpa/")
    assert fs.client_kwargs["endpoint_url"] == GCS_XML_API


def test_eks_pods_assume_the_irsa_role(monkeypatch, tmp_path):
    import botocore.session

    docs = render(KUBE / "overlays" / "eks")
    role = by_kind(docs, "ServiceAccount")["gpa-batch"]["metadata"]["annotations"][IRSA_ANNOTATION]
    token = tmp_path / "token"
    token.write_text("projected-service-account-token")
    _clean_aws_environment(monkeypatch, tmp_path)
    for where, _, container in ray_containers(docs):
        env = environment(docs, container, {})
        assert not set(KEY_VARIABLES) & set(env), where
        # What the EKS pod identity webhook adds to every pod of the annotated ServiceAccount.
        env |= {"AWS_ROLE_ARN": role, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_REGION": "us-west-2"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        credentials = botocore.session.get_session().get_credentials()
        assert credentials.method == "assume-role-with-web-identity", where


def test_the_docs_create_the_secret_the_manifests_name():
    docs = (ROOT / "docs" / "cluster.md").read_text()
    for name in USER_SECRETS:
        command = re.search(rf"kubectl -n gpa-batch create secret generic {name}((?:.|\\\n)*?)\n(?!\s)", docs)
        assert command, f"docs/cluster.md does not show how to create the Secret {name}"
        assert all(f"--from-literal={k}=" in command.group(1) for k in KEY_VARIABLES)
