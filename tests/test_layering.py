"""The package's import graph: no module imports another that (directly or not) imports it back.

Every ``import polarxr.x`` / ``from polarxr.x import`` counts, at module level, inside functions and under
``TYPE_CHECKING`` alike: a lazy import only hides a circle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "polarxr"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """polarxr module -> the polarxr modules it imports (the package ``polarxr`` itself left out)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t not in {"polarxr", name}}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle found by depth-first search (each reported once, from its smallest module)."""
    found = set()
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    found.add(tuple(path))
                elif nxt not in path and nxt > start:
                    stack.append((nxt, [*path, nxt]))
    return sorted(list(c) for c in found)


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_at_all():
    graph = import_graph()
    assert "polarxr.checkpoints" in graph and "polarxr.ingest.reader" in graph
    assert cycles(graph) == []


def test_scenes_find_the_product_reader_through_its_entry_point():
    """open_scene reads delivered products without importing the ingestion stage (no circle)."""
    from polarxr.scenes import product_reader

    assert not any(m.startswith("polarxr.ingest") for m in import_graph()["polarxr.scenes"])
    reader = product_reader("S1A_EW_GRDM_1SDH_20181203T081222_20181203T081322_024901_02BE4F_9FE3.SAFE")
    assert type(reader).__module__ == "polarxr.ingest.reader"
    assert product_reader("scene.tif") is None


@pytest.mark.parametrize("module, forbidden", [
    ("polarxr.predict", "polarxr.train"),        # inference reads checkpoints, it does not train
    ("polarxr.timeseries", "polarxr.pipeline"),  # time series read class maps, not the processing loop
    ("polarxr.cube", "polarxr.datasets"),        # building a cube needs no torch
    ("polarxr.patches", "polarxr.samplers"),
])
def test_layering(module, forbidden):
    assert forbidden not in import_graph()[module]
