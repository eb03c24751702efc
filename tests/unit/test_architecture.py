"""The package's shape, read from the source with `ast`: no stage imports another, no import cycle (imports inside
functions included), and the model facts the schema reads import no torch."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("pipeline", "models")
STAGES = ("validate", "prepare", "train", "evaluate", "predict", "exp", "tune", "compare")
ENTRY_POINTS = {f"pipeline.stages.{name}" for name in STAGES}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it (module level or inside functions), but for those under
    `if TYPE_CHECKING:`, which only the type checker reads."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` names the package, `from .. import x` the one above
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pipeline import tracking` imports the module pipeline.tracking; `from pipeline.x import f` x only
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name below a module
                target = target.rpartition(".")[0]
            if target and target != name and target not in PACKAGES:  # the bare packages' __init__ import nothing
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def test_the_graph_sees_imports_inside_functions(graph: dict[str, set[str]]) -> None:
    # imported inside fit's helpers, not at the top
    assert "pipeline.training.cross_validation" in graph["pipeline.stages.train"]
    assert ENTRY_POINTS <= set(graph)


def test_every_command_is_a_stage_module_and_every_stage_module_a_command() -> None:
    """The entry points live in one place: a module that runs `run_cli(main)` is in pipeline/stages/, and back."""
    commands = {
        name
        for name, path in project_modules().items()
        if "run_cli(main)" in path.read_text(encoding="utf-8") and not path.name.startswith("__")
    }
    stage_modules = {name for name in project_modules() if name.startswith("pipeline.stages.")}
    assert commands == stage_modules == ENTRY_POINTS


def test_no_stage_imports_another_stage(graph: dict[str, set[str]]) -> None:
    stages_importing_stages = {name: sorted(graph[name] & ENTRY_POINTS) for name in sorted(ENTRY_POINTS)}
    assert {name: stages for name, stages in stages_importing_stages.items() if stages} == {}


def test_no_library_module_imports_a_stage(graph: dict[str, set[str]]) -> None:
    libraries = set(graph) - ENTRY_POINTS
    assert {name: sorted(graph[name] & ENTRY_POINTS) for name in sorted(libraries) if graph[name] & ENTRY_POINTS} == {}


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_schema_and_the_model_facts_import_no_torch() -> None:
    code = (
        "import sys; import models, models.specs, pipeline.config, pipeline.artifacts; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
