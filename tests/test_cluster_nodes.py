"""Pod sizes against node shapes: the table "Node shapes" in docs/cluster.md states, for each Ray pod, the node
types it is meant for on GKE and EKS and their allocatable CPU and memory; this checks the table's allocatable
figures against each provider's published reservation rules, every rendered pod's requests against the table,
and that each overlay selects the node types the table covers.

A pod that requests a node's whole capacity never schedules (allocatable is always less); one that leaves less
than the node's DaemonSets ask for stays Pending too, hence the allowance below.
"""

from __future__ import annotations

import re

import pytest
from test_cluster_manifests import KUBE, OVERLAYS, RENDERED, ROOT, cluster_specs, render

# What the node's own DaemonSets (CNI, kube-proxy, logging, the NVIDIA device plugin, ...) may request.
DAEMONSET_ALLOWANCE = {"cpu": 1.0, "memory_gib": 2.0}
EVICTION_HARD_GIB = 100 / 1024
INSTANCE_TYPE = "node.kubernetes.io/instance-type"


def cpu_reserved(vcpu: int) -> float:
    """kube-reserved CPU on GKE and on the EKS AMIs: 6% of the first core, 1% of the second, 0.5% of the next two,
    0.25% of the rest."""
    steps = [(1, 0.06), (1, 0.01), (2, 0.005), (float("inf"), 0.0025)]
    reserved, left = 0.0, vcpu
    for cores, share in steps:
        take = min(cores, left)
        reserved, left = reserved + take * share, left - take
    return reserved


def gke_allocatable(vcpu: int, memory_gib: float) -> tuple[float, float]:
    """GKE: memory reserved is 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the next 112,
    2% above 128 GiB; plus the 100 MiB eviction threshold."""
    steps = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02)]
    reserved, left = 0.0, memory_gib
    for size, share in steps:
        take = min(size, left)
        reserved, left = reserved + take * share, left - take
    return vcpu - cpu_reserved(vcpu), memory_gib - reserved - EVICTION_HARD_GIB


def eks_allocatable(vcpu: int, memory_gib: float, max_pods: int) -> tuple[float, float]:
    """EKS AMIs: kube-reserved memory 255 MiB + 11 MiB per pod the node may hold, the 100 MiB eviction threshold,
    from the memory the node reports (Karpenter estimates it as 92.5% of the instance's: its default VM overhead)."""
    capacity = memory_gib * 0.925
    return vcpu - cpu_reserved(vcpu), capacity - (255 + 11 * max_pods) / 1024 - EVICTION_HARD_GIB


def node_shapes() -> list[dict]:
    """The rows of the table under "### Node shapes" in docs/cluster.md."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    section = text.split("### Node shapes", 1)[1]
    raw = section.splitlines()
    start = next(i for i, ln in enumerate(raw) if ln.startswith("|"))
    lines = raw[start: next((i for i in range(start, len(raw)) if not raw[i].startswith("|")), len(raw))]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip().strip("`") for c in line.strip("|").split("|")), strict=True))
        rows.append(cells)
    return rows


def parse_requests(text: str) -> dict[str, float]:
    """'6 CPU, 24 GiB, 1 GPU' -> {'cpu': 6, 'memory_gib': 24, 'gpu': 1}."""
    found = {"gpu": 0.0}
    for amount, unit in re.findall(r"([\d.]+)\s*(CPU|GiB|GPU)", text):
        found[{"CPU": "cpu", "GiB": "memory_gib", "GPU": "gpu"}[unit]] = float(amount)
    return found


def quantity(value: str | int) -> float:
    """A Kubernetes quantity in cores or GiB."""
    value = str(value)
    for suffix, scale in (("Gi", 1.0), ("Mi", 1 / 1024), ("m", 1 / 1000)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def pod_requests(spec: dict) -> dict[str, dict]:
    """Group name -> (requests, limits) of a cluster shape's Ray containers."""
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    out = {}
    for name, group in groups:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        out[name] = {
            kind: {"cpu": quantity(r["cpu"]), "memory_gib": quantity(r["memory"]),
                   "gpu": quantity(r.get("nvidia.com/gpu", 0))}
            for kind, r in resources.items()
        }
    return out


def test_the_tables_allocatable_figures_follow_the_providers_rules():
    rows = node_shapes()
    assert {r["Cloud"] for r in rows} == {"GKE", "EKS"}
    assert {r["Ray pod"] for r in rows} == {"head", "cpu", "gpu"}
    for row in rows:
        vcpu, memory = int(row["vCPU"]), float(row["Memory (GiB)"])
        if row["Cloud"] == "GKE":
            cpu, mem = gke_allocatable(vcpu, memory)
        else:
            cpu, mem = eks_allocatable(vcpu, memory, int(row["Max pods"]))
        assert (f"{cpu:.2f}", f"{mem:.2f}") == (row["Allocatable CPU"], row["Allocatable memory (GiB)"]), row


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(KUBE)))
def test_every_pod_fits_its_node_shapes_with_room_for_daemonsets(path):
    rows = node_shapes()
    for doc in render(path):
        for where, spec in cluster_specs(doc):
            for group, resources in pod_requests(spec).items():
                assert resources["requests"] == resources["limits"], f"{where} {group}: requests = limits"
                shapes = [r for r in rows if r["Ray pod"] == group]
                assert {r["Cloud"] for r in shapes} == {"GKE", "EKS"}, f"{group}: a node shape per cloud"
                for row in shapes:
                    assert parse_requests(row["Requests = limits"]) == resources["requests"], (where, group, row)
                    assert resources["requests"]["gpu"] == float(row["GPUs"]), (where, group, row)
                    room_cpu = float(row["Allocatable CPU"]) - resources["requests"]["cpu"]
                    room_memory = float(row["Allocatable memory (GiB)"]) - resources["requests"]["memory_gib"]
                    assert room_cpu >= DAEMONSET_ALLOWANCE["cpu"], f"{where} {group} on {row['Node type']}"
                    assert room_memory >= DAEMONSET_ALLOWANCE["memory_gib"], f"{where} {group} on {row['Node type']}"


def test_the_checks_refuse_a_pod_as_big_as_its_node():
    """The sizes issue 22 found: 8 CPU / 32 GiB GPU pods on 8 vCPU / 32 GiB nodes."""
    cpu, memory = gke_allocatable(8, 32)
    assert cpu < 8 and memory < 32
    cpu, memory = eks_allocatable(8, 32, 58)
    assert cpu < 8 and memory < 32


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_overlay_selects_the_node_types_of_the_table(overlay):
    """All three groups select (node.kubernetes.io/instance-type) the node types of one cloud's rows."""
    rows = node_shapes()
    for doc in render(overlay):
        for where, spec in cluster_specs(doc):
            groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
            selected = {group: (body["template"]["spec"].get("nodeSelector") or {}).get(INSTANCE_TYPE)
                        for group, body in groups}
            clouds = {r["Cloud"] for r in rows if r["Ray pod"] == "gpu" and r["Node type"] == selected["gpu"]}
            assert len(clouds) == 1, f"{where}: GPU node type {selected['gpu']!r} is not in the table"
            wanted = {r["Ray pod"]: r["Node type"] for r in rows if r["Cloud"] in clouds}
            assert selected == wanted, where
