"""The package's shape: no import cycle between modules, and no branch on a task's name outside tasks/.

The room-by-room rules (data/ never imports train/ ...) are import-linter contracts in
pyproject.toml, run by `make lint`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tunesmith"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    grimp = pytest.importorskip("grimp")  # installed with import-linter (the dev extra)
    # Imports inside functions count too: a cycle hidden in a function is still a cycle.
    graph = grimp.build_graph("tunesmith", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_no_task_name_is_compared_as_a_string_outside_tasks_and_config() -> None:
    from tunesmith.tasks import task_names

    names = "|".join(re.escape(name) for name in task_names())  # every registered task, from the registry
    quoted = rf"""["']({names})["']"""
    compared = re.compile(
        rf"""(==|!=|\bin\b)\s*[(\[{{]?\s*{quoted}"""  # task == "classify", task in ("instruct", ...)
        rf"""|{quoted}\s*(==|!=|\bin\b)"""  # "classify" == task, "pretrain" in tasks
        rf"""|\b(if|elif|case)\b[^#\n]*{quoted}\s*:"""  # match/case on a name
    )
    allowed = {PACKAGE / "config.py"}
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed and PACKAGE / "tasks" not in path.parents
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if compared.search(line)
    ]
    assert offenders == []


MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600
SIZED_ROOMS = ("train", "tasks", "select")
# The training loop stays one function read top to bottom (as nanoGPT's does).
LONG_ON_PURPOSE = {("train/loop.py", "train_loop")}


def test_functions_and_modules_of_train_tasks_and_select_stay_small() -> None:
    import ast

    too_long = []
    for room in SIZED_ROOMS:
        for path in sorted((PACKAGE / room).rglob("*.py")):
            name = str(path.relative_to(PACKAGE))
            text = path.read_text(encoding="utf-8")
            if len(text.splitlines()) > MAX_MODULE_LINES:
                too_long.append(f"{name}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES and (name, node.name) not in LONG_ON_PURPOSE:
                        too_long.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert too_long == []


def test_no_module_imports_back_the_package_that_imports_it() -> None:
    """A package's __init__ that imports its submodules, and a submodule that imports from that
    package (`from tunesmith.data.doctor import detect`), make a package-level cycle: the submodule
    reads a half-initialised package. Submodules import their siblings by their own names."""
    import ast

    src = PACKAGE.parent
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        module = ".".join(path.relative_to(src).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {  # imports under `if TYPE_CHECKING:` never run
            id(child)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
            for child in ast.walk(block)
        }
        for node in ast.walk(tree):
            if (
                not isinstance(node, ast.ImportFrom)
                or node.level
                or not node.module
                or id(node) in typing_only
            ):
                continue
            init = src / node.module.replace(".", "/") / "__init__.py"
            if module.startswith(node.module + ".") and init.is_file():
                imported = re.search(
                    rf"^\s*(from|import) {re.escape(module)}\b", init.read_text(), re.MULTILINE
                )
                if imported:
                    offenders.append(f"{module}:{node.lineno} imports from {node.module}, which imports it")
    assert offenders == []
