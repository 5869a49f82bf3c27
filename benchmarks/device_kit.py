"""The wheels that a lent GPU machine lacks to run both GPU benchmarks (docs/performance.md, "Running it on a lent
GPU"): gpa_throughput.py (the library) and pipeline.py (the Ray Data job against in-process GPA).

    python benchmarks/device_kit.py            # here, with network: fills .whl/ and prints the travelling size

The device image (KINDS.md of the device tool) has torch, transformers, numpy, pandas, pyarrow, fsspec and Ray's
core dependencies but not Ray, jsonschema (which `import ray` needs), soundfile or soxr, and it cannot reach a
package registry: the wheels travel with the working tree, which may hold 64 MiB in all. Ray's wheel alone is
79 MB, 32 MB of it a Java jar that a local single-node Ray Data job never loads, so Ray is repacked without the
parts named in RAY_UNUSED.
benchmarks/device_run.sh installs the kit there with ``pip install --no-deps --target``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT_DIR = ROOT / ".whl"
MIB = 1024 * 1024
LIMIT = 60 * MIB  # the device tool takes 64 MiB; the rest is headroom for files added since the kit was sized

# What the two benchmarks import at run time and the device image lacks, pinned (Ray: the version of our venv).
# Their own run-time requirements are in the image (DEVICE_IMAGE) or here: main() checks.
KIT = {
    "ray": "2.60.0",
    "soundfile": "0.14.0",  # bundles libsndfile (FLAC and WAV, all the benchmarks read and write)
    "cffi": "2.1.1",  # soundfile's
    "pycparser": "3.12",  # cffi's
    "soxr": "1.1.0",  # gpa.audio's resampler
    "jsonschema": "4.26.0",  # `import ray` imports it (runtime_env plugin schemas)
    "jsonschema-specifications": "2025.9.1",  # jsonschema's
    "referencing": "0.37.0",  # jsonschema's
    "rpds-py": "2026.9.1",  # jsonschema's
}

# Ray parts a local single-node Ray Data job never loads (it starts Ray with include_dashboard=False).
RAY_UNUSED = (
    "ray/jars/",  # Java workers
    "ray/dashboard/client/",  # the dashboard's web page
    "ray/rllib/",
    "ray/serve/",
    "ray/llm/",
)

# Python packages of the device image ('cuda'), as KINDS.md lists them (2026-11-17).
DEVICE_IMAGE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())

# the device README's platform tags: pip matches each manylinux_2_N exactly
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(wheel: Path) -> str:
    """The METADATA of the wheel's own .dist-info (Ray's wheel also holds vendored packages' metadata)."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return z.read(name).decode()


def requirements(metadata: str) -> list[str]:
    """Names of the run-time requirements in a METADATA, for CPython 3.12 on Linux, extras left out."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's own copy: this script runs wherever pip does
        from pip._vendor.packaging.requirements import Requirement
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    names = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or req.marker.evaluate(environment):
            names.append(normalize(req.name))
    return names


def unmet_requirements(wheels: list[Path]) -> list[str]:
    """'wheel: requirement' for each run-time requirement of a kit wheel that is neither in the image nor in the
    kit."""
    present = DEVICE_IMAGE | {normalize(w.name.split("-")[0]) for w in wheels}
    return [f"{w.name}: {r}" for w in wheels for r in requirements(wheel_metadata(w)) if r not in present]


def slim_wheel(source: Path, target: Path, drop: tuple[str, ...]) -> int:
    """Copy the wheel ``source`` to ``target`` without the members under the prefixes ``drop``, their RECORD lines
    left out too (so that pip installs exactly what is there). Returns how many members were left out."""
    dropped = 0
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        record = next(n for n in src.namelist() if re.fullmatch(r"[^/]+\.dist-info/RECORD", n))
        for info in src.infolist():
            if info.filename == record:
                continue
            if info.filename.startswith(drop):
                dropped += 1
                continue
            data = src.read(info)
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        kept = [line for line in src.read(record).decode().splitlines()
                if line and not line.split(",", 1)[0].startswith(drop)]
        dst.writestr(src.getinfo(record), "\n".join(kept) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    return dropped


def tracked_bytes(root: Path = ROOT) -> int:
    """Bytes of the files git tracks in ``root``: what travels besides the kit (untracked files that are not
    ignored travel too; commit or ignore them before a device call)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    paths = (root / p for p in listed.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def download(names: dict[str, str], into: Path) -> list[Path]:
    """The wheels for the device (CPython 3.12, manylinux x86_64), without their dependencies."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           "--python-version", "3.12", "--implementation", "cp", *platforms, "--dest", str(into),
                           *(f"{n}=={v}" for n, v in names.items())])
    if done.returncode != 0:
        sys.exit("device kit: pip could not download the kit (its message is above)")
    return sorted(into.glob("*.whl"))


def build(kit_dir: Path = KIT_DIR) -> list[Path]:
    """Fill ``kit_dir`` with the kit (its earlier wheels removed: two versions of one package stop the install)."""
    with tempfile.TemporaryDirectory(prefix="device-kit-") as temp:
        downloaded = download(KIT, Path(temp))
        kit_dir.mkdir(exist_ok=True)
        for old in kit_dir.glob("*.whl"):
            old.unlink()
        for wheel in downloaded:
            if normalize(wheel.name.split("-")[0]) == "ray":
                dropped = slim_wheel(wheel, kit_dir / wheel.name, RAY_UNUSED)
                print(f"{wheel.name}: {wheel.stat().st_size / MIB:.1f} MiB, "
                      f"{(kit_dir / wheel.name).stat().st_size / MIB:.1f} MiB without {dropped} files under "
                      f"{', '.join(RAY_UNUSED)}")
            else:
                shutil.copy2(wheel, kit_dir / wheel.name)
    return sorted(kit_dir.glob("*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only size the kit already in .whl/")
    args = parser.parse_args()
    wheels = sorted(KIT_DIR.glob("*.whl")) if args.check else build()
    unmet = unmet_requirements(wheels)
    if unmet:
        sys.exit(f"device kit: requirements neither in the device image nor in the kit: {'; '.join(unmet)}")
    kit, tracked = folder_bytes(KIT_DIR), tracked_bytes()
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / MIB:6.2f} MiB  {wheel.name}")
    total = kit + tracked
    print(f"kit {kit / MIB:.1f} MiB in {len(wheels)} wheels; tracked files {tracked / MIB:.1f} MiB; travelling "
          f"{total / MIB:.1f} MiB (limit {LIMIT / MIB:.0f} MiB)")
    if total > LIMIT:
        sys.exit(f"device kit: the travelling tree is {total / MIB:.1f} MiB, over {LIMIT / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
