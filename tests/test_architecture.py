"""The structure stays as designed: rooms in layers, imports only downward, no import cycles.

Read from the source with ``ast`` (every import, the lazy ones inside functions included), so
the check costs no import and holds for code that is never run here.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "brevpipe"

# Each room of brevpipe/ and its layer: a module imports its own room and lower layers only.
LAYERS = {
    "errors": 0,
    "brevpipe": 1,  # __init__: the version
    "config": 2,  # settings, component registry, schema, composing
    "io": 3,  # storage, the data cache, stage outputs as files
    "jobs": 4,  # the job, its bucket layout, output.json, records, stop requests, heartbeats
    "engine": 5,  # DAG, runner, stage contract, seeds, checkpoints, cluster roles, rerun checks
    "data": 6,  # components
    "models": 7,
    "reports": 7,
    "serving": 7,  # a model's use: predictor, service, MLflow model, resolving model names
    "integrations": 8,  # MLflow mirror, model registry, sweeps, lifecycle
    "stages": 8,
    "ui": 9,  # the web dashboard
    "commands": 10,  # argument parsing and printing
    "__main__": 11,
    "api": 11,  # the public surface: names from every room
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(module: str) -> Iterator[tuple[str, int]]:
    """``(imported brevpipe module, line)`` for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "brevpipe":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "brevpipe":
                continue
            for alias in node.names:  # "from brevpipe.io import storage" is a module
                child = f"{node.module}.{alias.name}"
                yield (child if child in MODULES else node.module), node.lineno


GRAPH = {m: sorted({t for t, _ in imports(m) if t in MODULES and t != m}) for m in MODULES}


def test_every_room_has_a_layer() -> None:
    assert {room(m) for m in MODULES} <= set(LAYERS), "add the new room to LAYERS"


def test_imports_only_go_down() -> None:
    upward = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
        for m in MODULES
        for target, line in imports(m)
        if target in MODULES and room(target) != room(m)
        and LAYERS[room(target)] >= LAYERS[room(m)]
    ]
    assert not upward, "imports that go up or sideways:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    cycles, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in GRAPH[module]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_what_they_check() -> None:
    """The graph is read at all: the runner imports the job and the CLI its commands."""
    assert "brevpipe.jobs.job" in GRAPH["brevpipe.engine.runner"]
    assert any(t.startswith("brevpipe.commands.") for t in GRAPH["brevpipe.commands.cli"])
    assert len(MODULES) > 40


def test_the_public_api_names_resolve_and_user_projects_use_it() -> None:
    api = importlib.import_module("brevpipe.api")
    assert sorted(api.__all__) == sorted(set(api.__all__))
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    init = MODULES["brevpipe.commands.init"].read_text()
    assert "from brevpipe.api import" in init and "from brevpipe.engine" not in init


# What takes a tenth of a second or more to import (measured with ``python -c "import X"``): a
# function may import these, or a brevpipe module that imports them, so that ``brevpipe --help``,
# config errors and the job list stay fast. Anything else is imported at the top of its module.
SLOW_TO_IMPORT = {
    "tensorflow", "keras", "mlflow", "albumentations", "pandas", "numpy", "hydra", "omegaconf",
    "fastapi", "uvicorn", "rich", "filelock", "sklearn", "s3fs",
}  # fmt: skip


def top_level_imports(module: str) -> set[str]:
    """What a module imports when it is imported (not what its functions import later)."""
    names = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in MODULES}  # fmt: skip
    return names


def slow_to_import(name: str, seen: set[str] | None = None) -> bool:
    """Whether importing ``name`` imports something in :data:`SLOW_TO_IMPORT`."""
    seen = set() if seen is None else seen
    if name.split(".")[0] in SLOW_TO_IMPORT:
        return True
    if name not in MODULES or name in seen:
        return False
    seen.add(name)
    return any(slow_to_import(target, seen) for target in top_level_imports(name))


def test_functions_import_only_what_is_slow_to_import() -> None:
    """An import inside a function is there to keep the command line fast; any other belongs at
    the top of the module, where a reader looks for what it uses."""
    needless = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                               else node.module for a in node.names]  # fmt: skip
                else:
                    continue
                needless += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {target}"
                             for target in targets if not slow_to_import(target)]  # fmt: skip
    assert not needless, "imports to move to the top of their module:\n" + "\n".join(needless)
