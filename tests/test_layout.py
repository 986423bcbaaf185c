"""The code's layout as docs/architecture.md draws it: no import circle, and each model kind in one
package whose prediction side imports nothing of its training side."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "infer", "train")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports anywhere (in functions and under
    ``TYPE_CHECKING`` too)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.update(c for c in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if c in modules)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
        graph[name] = found - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_import_circle():
    graph = import_graph()
    circles = sorted({tuple(sorted(m for m in reachable(graph, start) if start in reachable(graph, m)))
                      for start in graph if any(start in reachable(graph, d) for d in graph[start])})
    assert circles == []


def test_each_kind_is_one_package_whose_prediction_side_imports_no_training():
    from utils.kinds import BUILT_IN
    from utils.kinds.members import MEMBER_TYPES
    from utils.kinds.registry import KINDS

    graph = import_graph()
    for name in BUILT_IN:
        package = REPO / "utils" / "kinds" / name
        assert {p.name for p in package.glob("*.py")} >= {"__init__.py", "config.py", "network.py", "member.py",
                                                           "training.py"}, name
        assert KINDS[name].name == MEMBER_TYPES[name].kind == name
        assert KINDS[name].config_class.__module__ == f"utils.kinds.{name}.config"
        assert MEMBER_TYPES[name].__module__ == f"utils.kinds.{name}.member"
        for side in ("config", "network", "member"):
            needs = reachable(graph, f"utils.kinds.{name}.{side}")
            training = sorted(m for m in needs if m.endswith(".training") or m.startswith("utils.training") or m in (
                "utils.kinds.base", "utils.kinds.registry", "utils.data.datasets", "utils.data.presets"))
            assert training == [], f"utils.kinds.{name}.{side} imports {training}"
    assert not (REPO / "utils" / "kinds" / "__init__.py").read_text().count("\nfrom utils.kinds")
