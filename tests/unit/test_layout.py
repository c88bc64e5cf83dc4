"""The module layout stays as the developers' guide asks: no import circle, one home for errors."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Dict, Set

import pipeline
from pipeline import errors

PACKAGE = Path(pipeline.__file__).parent


def _imports() -> Dict[str, Set[str]]:
    """Module -> the pipeline modules it imports (at any depth of the file, lazy ones too)."""
    graph: Dict[str, Set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
                found.add(node.module.split(".")[1])
        graph[name] = found - {name}
    return graph


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


def test_the_switch_interface_knows_none_of_its_implementations():
    graph = _imports()
    assert not graph["switch"] & {"reload_switch", "live_switch", "compose"}
    assert {"reload_switch", "live_switch"} <= graph["compose"]


def test_every_error_class_lives_in_errors_py():
    elsewhere = []
    for path in PACKAGE.glob("*.py"):
        if path.stem == "__main__":
            continue   # importing it runs the program
        module = importlib.import_module(f"pipeline.{path.stem}")
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == module.__name__ \
                    and module is not errors:
                elsewhere.append(f"{path.stem}.{name}")
    # gate.NotHealthyYet is the probe's private signal to its retry loop, never raised past it.
    assert elsewhere == ["gate.NotHealthyYet"] or elsewhere == [], elsewhere
