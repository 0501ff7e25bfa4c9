"""Imports run one way, bottom to top: plugins <- builder <- recipes <- deploy <- trtkit (the CLI);
no module-level import cycles anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["plugins", "builder", "recipes", "deploy", "trtkit"]


def module_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps.add(node.module)
            graph[mod] = {d for d in deps if d.split(".")[0] in LAYERS}
    return graph


def test_layers_import_downward_only():
    bad = []
    for mod, deps in module_imports().items():
        rank = LAYERS.index(mod.split(".")[0])
        for dep in deps:
            if LAYERS.index(dep.split(".")[0]) > rank:
                bad.append(f"{mod} imports {dep}")
    assert not bad, bad


def test_no_import_cycles():
    graph = module_imports()

    def resolve(dep: str) -> str | None:
        while dep and dep not in graph:
            dep = dep.rpartition(".")[0]
        return dep or None

    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(filter(None, map(resolve, graph[m]))):
            if d == m:
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, d]))
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_unsafe_calls():
    """No pickle/torch.load of files, no yaml.load, no shell=True anywhere in the shipped code."""
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            text = path.read_text()
            for needle in ("torch.load(", "pickle.load", "yaml.load(", "shell=True"):
                assert needle not in text, f"{path}: {needle}"
