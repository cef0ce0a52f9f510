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


#: A circle merged with the ingestion stage (issue 10): open_scene hands delivered products to
#: polarxr.ingest, whose modules read product names and grids from scenes (directly and through region,
#: stac and synthetic). Untying it means moving that dispatch out of scenes; until then it is the only
#: one allowed, and test_no_import_circles_at_all below shows it.
def _known(circle: list[str]) -> bool:
    return "polarxr.scenes" in circle and any(m.startswith("polarxr.ingest") for m in circle)


def test_no_import_circles_but_the_known_one():
    graph = import_graph()
    assert "polarxr.checkpoints" in graph
    assert [c for c in cycles(graph) if not _known(c)] == []


@pytest.mark.xfail(reason="scenes <-> ingest: open_scene dispatches delivered products to polarxr.ingest", strict=True)
def test_no_import_circles_at_all():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("module, forbidden", [
    ("polarxr.predict", "polarxr.train"),        # inference reads checkpoints, it does not train
    ("polarxr.timeseries", "polarxr.pipeline"),  # time series read class maps, not the processing loop
    ("polarxr.cube", "polarxr.datasets"),        # building a cube needs no torch
    ("polarxr.patches", "polarxr.samplers"),
])
def test_layering(module, forbidden):
    assert forbidden not in import_graph()[module]
