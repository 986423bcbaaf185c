"""The code's layout as docs/architecture.md draws it: the library's packages in layers, each importing
only the ones below it (so no import circle between them), and each model kind in one package whose
prediction side imports nothing of its training side."""

from __future__ import annotations

import ast
from pathlib import Path

from utils.core.kind_names import BUILT_IN, built_in_module

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
    # the registries import each built-in kind by its name (utils.core.kind_names.built_in_module)
    graph["utils.kinds.registry"] |= {built_in_module(kind, "training") for kind in BUILT_IN}
    graph["utils.kinds.members"] |= {built_in_module(kind, "member") for kind in BUILT_IN}
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


# utils/'s packages from the bottom up: each may import only itself and the packages before it. The
# kinds build on the engine, the data, the fusion and the metric; what drives the kinds (prediction, the
# train-all pipeline, the web app, the benchmarks) sits above them.
LAYERS = ("core", "nets", "data", "training", "ensemble", "scoring", "kinds", "prediction", "pipeline", "serving",
          "benchmarking")


def _layer(module: str) -> str:
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]], layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Every import of a utils package from one below it in ``layers``, as ``importer -> imported``."""
    return sorted(f"{module} -> {needed}" for module, needs in graph.items() if module.count(".") and
                  module.startswith("utils.") for needed in needs if needed.count(".") and needed.startswith("utils.")
                  and layers.index(_layer(needed)) > layers.index(_layer(module)))


def test_no_import_runs_upward_between_the_librarys_packages():
    packages = {p.name for p in (REPO / "utils").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), "a new package of utils/ takes its place in LAYERS"
    assert upward_imports(import_graph()) == []


def test_the_layering_check_finds_an_upward_import():
    graph = {"utils.core.files": {"utils.kinds.registry"}, "utils.kinds.registry": {"utils.core.files"},
             "utils.pipeline.cli": {"utils.kinds.registry", "utils.core.files"}}
    assert upward_imports(graph) == ["utils.core.files -> utils.kinds.registry"]


def test_the_engine_knows_no_kind_no_data_format_and_no_stage():
    """training/ is the engine alone: everything it reaches is its own or utils.core's."""
    graph = import_graph()
    for module in (m for m in graph if m.startswith("utils.training.")):
        outside = sorted(m for m in reachable(graph, module) if not m.startswith(("utils.training", "utils.core")))
        assert outside == [], f"{module} reaches {outside}"


def test_each_kind_is_one_package_whose_prediction_side_imports_no_training():
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
        assert KINDS[name].member_class is MEMBER_TYPES[name]
    assert not (REPO / "utils" / "kinds" / "__init__.py").read_text().count("\nfrom utils.kinds")


def test_a_built_in_kind_is_registered_once():
    """Its name in utils.core.kind_names.BUILT_IN: both registries derive from it, naming no kind of
    their own, and train_all, the one training script and the notebook know the kinds only through them."""
    from utils.kinds.members import MEMBER_TYPES
    from utils.kinds.registry import KINDS

    assert tuple(KINDS)[:len(BUILT_IN)] == BUILT_IN and tuple(MEMBER_TYPES)[:len(BUILT_IN)] == BUILT_IN
    places = [REPO / "utils" / "kinds" / "registry.py", REPO / "utils" / "kinds" / "members.py",
              REPO / "utils" / "pipeline" / "train_all.py", REPO / "utils" / "pipeline" / "cli.py",
              REPO / "kaggle" / "build_notebook.py", REPO / "train" / "train_kind.py", REPO / "train" / "train_all.py"]
    for path in places:
        tree = ast.parse(path.read_text())
        docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        texts = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                 and isinstance(node.value, str) and id(node) not in docs]
        texts += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        named = sorted({name for name in BUILT_IN for text in texts
                        if text == name or text.startswith(f"utils.kinds.{name}")})
        assert named == [], f"{path.relative_to(REPO)} names {named}"


def test_the_nih_backbone_is_a_pretraining_kind_of_the_registry_in_one_package():
    """The backbone has the kinds' package shape without a member (nothing of it is predicted), and
    train_all knows it only through the registry: its stage, config section and file checks."""
    from utils.kinds.base import PretrainingKind
    from utils.kinds.registry import KINDS, PRETRAINING

    kind = PRETRAINING["backbone"]
    assert isinstance(kind, PretrainingKind) and kind.name == "backbone" and "backbone" not in KINDS
    package = REPO / "utils" / "kinds" / "backbone"
    assert {p.name for p in package.glob("*.py")} == {"__init__.py", "config.py", "network.py", "training.py"}
    assert kind.config_class.__module__ == "utils.kinds.backbone.config"
    graph = import_graph()
    for side in ("config", "network"):
        needs = reachable(graph, f"utils.kinds.backbone.{side}")
        assert not [m for m in needs if m.endswith(".training") or m.startswith("utils.training")], side
    pipeline = (REPO / "utils" / "pipeline" / "train_all.py").read_text()  # train_all's library
    code = pipeline.split('"""', 2)[2]
    assert not [word for word in ("train_backbone", "BackboneConfig", "nih_dir is") if word in code]


SCRIPT_FOLDERS = ("infer", "train")


def _scripts() -> list[Path]:
    return sorted(p for folder in SCRIPT_FOLDERS for p in (REPO / folder).glob("*.py") if p.name != "__init__.py")


def test_infer_and_train_hold_scripts_only_and_each_is_get_args_parser_and_main():
    """Every file of infer/ and train/ is a thin entry script: ``get_args_parser()`` and ``main(argv)``
    at top level and the ``__main__`` guard; the library is in utils/."""
    for path in _scripts():
        tree = ast.parse(path.read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert {"get_args_parser", "main"} <= functions, path.relative_to(REPO)
        assert any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body), path


def test_no_project_module_imports_a_script():
    """Only the tests import scripts (to run their ``main``); the Kaggle notebook's helpers may run
    make_submission's main, as the notebook does."""
    scripts = {_module_name(path) for path in _scripts()}
    graph = import_graph()
    for path in (REPO / "kaggle").glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.update(c for c in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if c in scripts)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in scripts)
        graph[f"kaggle/{path.name}"] = found - {"infer.make_submission"}
    importers = {module: sorted(graph[module] & scripts) for module in graph if graph[module] & scripts}
    assert importers == {}


def test_utils_is_packages_by_concern():
    """utils/ holds packages only (each with a docstring saying its concern), no flat modules."""
    flat = sorted(p.name for p in (REPO / "utils").glob("*.py") if p.name != "__init__.py")
    assert flat == []
    packages = sorted(p for p in (REPO / "utils").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert {p.name for p in packages} >= {"core", "data", "nets", "training", "kinds", "ensemble", "scoring"}
    for package in packages:
        init = package / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), package


def test_the_files_the_library_finds_from_its_own_place_exist():
    """Moving a module moves what ``Path(__file__)`` finds: the default config and the web app's page."""
    from utils.core.config import DEFAULT_CONFIG
    from utils.serving.app import PAGE

    assert DEFAULT_CONFIG == REPO / "train" / "configs" / "full.yaml" and DEFAULT_CONFIG.is_file()
    assert PAGE.is_file()


def test_a_kind_is_three_roles_and_holds_no_state():
    """ModelKind is the training, pipeline-stage and measuring roles, each a class of its own with its
    own methods; the registry's one instance per kind keeps nothing between runs (no instance attributes,
    also after the in-process training runs of the suite that came before)."""
    from utils.kinds.base import KindChecks, KindStage, KindTraining, ModelKind
    from utils.kinds.registry import KINDS, PRETRAINING

    roles = (KindTraining, KindStage, KindChecks)
    assert ModelKind.__mro__[1:4] == roles
    methods = [{name for name, value in vars(role).items() if callable(value)} for role in roles]
    assert all(methods) and not (methods[0] & methods[1] or methods[0] & methods[2] or methods[1] & methods[2])
    for kind in KINDS.values():
        assert isinstance(kind, ModelKind) and vars(kind) == {}, kind.name
    for kind in PRETRAINING.values():
        assert isinstance(kind, KindStage) and not isinstance(kind, KindTraining) and vars(kind) == {}, kind.name
