"""Import boundaries of the library: runtime modules never load the test fixtures, and audio I/O needs no torch.

Each check imports in a fresh interpreter, so modules that other tests already loaded cannot hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = "gpa.testing"


def _module_names(package: str) -> list[str]:
    """Every module of ``package`` found on disk (packages by their ``__init__``), without importing any."""
    base = ROOT / package.replace(".", "/")
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _is_fixture(name: str) -> bool:
    return name == FIXTURES or name.startswith(FIXTURES + ".")


def _loaded_after_importing(modules: list[str]) -> list[str]:
    """The names in ``sys.modules`` of a fresh interpreter after importing ``modules``."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_runtime_modules_never_import_the_fixtures():
    runtime = [name for name in _module_names("gpa") if not _is_fixture(name)]
    # the walk found the split packages' modules, not only their fronts
    assert {"gpa.model", "gpa.llm", "gpa.bicodec.model", "gpa.glm_tokenizer.encoder"} <= set(
        runtime)
    loaded = _loaded_after_importing(runtime)
    assert set(runtime) <= set(loaded)
    assert [name for name in loaded if _is_fixture(name)] == []


def test_audio_io_imports_without_torch():
    audio = _module_names("gpa.audio")
    assert len(audio) > 1
    loaded = _loaded_after_importing(audio)
    assert set(audio) <= set(loaded)
    assert [name for name in loaded if name == "torch" or name.startswith("torch.")] == []

