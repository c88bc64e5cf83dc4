"""The module layout shows the architecture (docs/architecture.md) and the imports keep to it:
core knows nothing outside core, adapters never know the flows, the flows never know an adapter,
and only the entry points (cli, compose) put them together. No import circle, one home for errors."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Dict, List, Set

import pytest

import pipeline
from pipeline.core import errors

PACKAGE = Path(pipeline.__file__).parent
LAYERS = ("core", "adapters", "flows")
# Process plumbing every part may use: logging with secrets masked, signals, deferred imports.
PLUMBING = {"pipeline.log", "pipeline.signals", "pipeline._lazy"}
# What each layer may import from pipeline, besides itself and the plumbing.
ALLOWED = {
    "core": set(),                 # values, pure decisions, the interfaces
    "adapters": {"core"},          # the outside world behind the interfaces
    "flows": {"core"},             # the runbooks, on the interfaces only
}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    """Module -> the pipeline modules it imports (at any depth of the file, lazy ones too)."""
    graph: Dict[str, Set[str]] = {}
    for path in root.rglob("*.py"):
        name = _module_name(path, root)
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if not base.startswith("pipeline"):
                    continue
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if (root.parent / (candidate.replace(".", "/") + ".py")).exists()
                              else base)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("pipeline."))
        graph[name] = found - {name, "pipeline"}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "entry"


def test_the_three_layers_are_packages_and_every_module_is_in_one_or_an_entry_point():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "_lazy", "cli", "compose", "log", "signals"], top
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_what_it_may(layer):
    wrong: List[str] = []
    for module, imported in sorted(_imports().items()):
        if _layer(module) != layer:
            continue
        for other in sorted(imported - PLUMBING):
            if _layer(other) != layer and _layer(other) not in ALLOWED[layer]:
                wrong.append(f"{module} imports {other}")
    assert wrong == [], wrong


def test_the_rule_sees_a_wrong_import(tmp_path):
    """The check above can fail: a flow importing an adapter is reported."""
    fake = tmp_path / "pipeline"
    (fake / "flows").mkdir(parents=True)
    (fake / "adapters").mkdir()
    for init in (fake / "__init__.py", fake / "flows" / "__init__.py", fake / "adapters" / "__init__.py"):
        init.write_text("")
    (fake / "adapters" / "engine.py").write_text("")
    (fake / "flows" / "deploy.py").write_text("from ..adapters import engine\n")
    (fake / "flows" / "verify.py").write_text("from pipeline.adapters.engine import Engine\n")
    graph = _imports(fake)
    assert graph["pipeline.flows.deploy"] == graph["pipeline.flows.verify"] == {"pipeline.adapters.engine"}
    assert _layer("pipeline.flows.deploy") == "flows" and "adapters" not in ALLOWED["flows"]


def test_no_module_imports_itself_back_through_another():
    graph = _imports()

    def reach(start: str) -> Set[str]:
        seen: Set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return seen

    circles = sorted(name for name in graph if name in reach(name))
    assert circles == [], f"modules on an import circle: {circles}"


def test_only_compose_names_the_implementations_of_an_interface():
    graph = _imports()
    implementations = {"pipeline.adapters.reload_switch", "pipeline.adapters.live_switch",
                       "pipeline.adapters.engine", "pipeline.adapters.swarm"}
    assert implementations <= graph["pipeline.compose"]
    users = sorted(m for m, imported in graph.items()
                   if imported & {"pipeline.adapters.reload_switch", "pipeline.adapters.live_switch"}
                   and m != "pipeline.compose")
    assert users == [], users


def test_every_error_class_lives_in_errors_py():
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.stem == "__main__":
            continue   # importing it runs the program
        module = importlib.import_module(_module_name(path))
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == module.__name__ \
                    and module is not errors:
                elsewhere.append(f"{path.stem}.{name}")
    # gate.NotHealthyYet is the probe's private signal to its retry loop, never raised past it.
    assert elsewhere == ["gate.NotHealthyYet"] or elsewhere == [], elsewhere
