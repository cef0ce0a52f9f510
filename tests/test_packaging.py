"""Packaging: lower bounds in pyproject.toml, exact versions in requirements.lock, every import declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.lock"


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``dask[array]>=1`` -> ``dask``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version.strip()
    return pins


def test_runtime_dependencies_are_lower_bounds_only():
    project = PYPROJECT["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pinned = [r for r in requirements if "==" in r or "~=" in r]
    assert pinned == []
    assert all(">=" in r for r in requirements), [r for r in requirements if ">=" not in r]


def test_build_backend_reads_the_license_string():
    # PEP 639's `license = "MIT"` needs setuptools >= 77
    assert PYPROJECT["project"]["license"] == "MIT"
    setuptools = next(r for r in PYPROJECT["build-system"]["requires"] if _name(r) == "setuptools")
    floor = tuple(int(p) for p in setuptools.split(">=")[1].split("."))
    assert floor >= (77,)


def test_lock_pins_everything_pyproject_asks_for():
    pins = _lock()
    project = PYPROJECT["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    assert wanted - set(pins) == set()
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.]*", v) for v in pins.values()), pins
    # the CPU wheel on disk satisfies it, and the lock names no CUDA runtime
    assert pins["torch"] == "2.13.0"
    assert not [n for n in pins if n.startswith("nvidia-") or n == "triton"]
    assert "polarxr" not in pins


def test_every_imported_package_is_declared():
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    declared |= {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]}
    providers = packages_distributions()
    missing = {}
    for path in [*(ROOT / "polarxr").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "polarxr":
                    continue
                dists = {_name(d) for d in providers.get(top, [])} or {_name(top)}
                if not dists & declared:
                    missing.setdefault(top, str(path.relative_to(ROOT)))
    # dask_cuda is a GPU-only import of the gpu extra, which this machine does not install
    missing.pop("dask_cuda", None)
    missing.pop("pynvml", None) if "nvidia-ml-py" in declared else None
    assert missing == {}
