"""The package's layout, read from its source with ``ast`` (nothing is imported):

* no import cycle among torchwm_rl's modules, counting imports at module level and inside
  functions alike (a function-level import is a cycle that only shows when that function runs);
* the app's shared modules (run folder, result record, plots, progress) import none of its
  demos or commands, the command line imports its command modules only when one runs, and the
  library never imports the app;
* ``docs/design-decisions.md`` names every module of the package in its module list.

Imports under ``if TYPE_CHECKING:`` never run and are not counted; modules imported by a
computed name (``importlib.import_module(...)``, the zoo's registry) are not seen.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "torchwm_rl"

#: the app's shared modules: what every demo and command may use, and which import none of them
SHARED_APP = {"torchwm_rl.app.runs", "torchwm_rl.app.progress"}

#: the library's modules that are entry points into the app (the one things outside it that import it)
APP_ENTRY_POINTS = {"torchwm_rl.__main__", "torchwm_rl.demo"}


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/package``."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str], top_level_only: bool = False) -> set[str]:
    """The modules of ``known`` that ``module`` (the file ``path``) imports anywhere in its body
    (only in its top-level statements with ``top_level_only``). ``from X import name`` counts as
    an import of ``X.name`` when that is a module, else of ``X``; relative imports are resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known and name != module}


def import_graph(root: Path = ROOT, package: str = PACKAGE, top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see :func:`_imports`)."""
    files = _module_names(root, package)
    return {name: _imports(name, path, set(files), top_level_only) for name, path in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle's modules (the strongly connected components of more than one module,
    Tarjan's algorithm), each as a path ``a -> b -> ... -> a`` through the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_path(graph, component) for component in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One closed path through ``component`` (a strongly connected set), from its first module."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        successors = sorted(graph[path[-1]] & component)
        if start in successors and len(path) > 1:
            return path + [start]
        step = next((m for m in successors if m not in seen), successors[0])
        if step in seen:
            return path[path.index(step):] + [step]
        path.append(step)
        seen.add(step)


def test_the_cycle_finder_sees_function_level_imports_and_skips_type_checking(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found; one closed
    only under ``if TYPE_CHECKING:`` is not (it never runs)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (pkg / "c.py").write_text("from . import d\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import y\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.d"] == set()
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    assert import_graph(tmp_path, "pkg", top_level_only=True)["pkg.sub.b"] == set()


def test_no_import_cycles_in_the_package():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (module-level and function-level imports both count): " + "; ".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_apps_shared_modules_import_no_demo_or_command():
    """app/runs.py and app/progress.py are what every demo and command shares: they import
    nothing else of the app, so a new demo or command cannot close a circle through them."""
    graph = import_graph()
    assert SHARED_APP <= set(graph), f"missing shared app modules: {sorted(SHARED_APP - set(graph))}"
    for module in sorted(SHARED_APP):
        app_imports = {m for m in graph[module] if m.startswith("torchwm_rl.app")}
        assert app_imports <= SHARED_APP, f"{module} imports {sorted(app_imports - SHARED_APP)}"


def test_the_command_line_imports_its_commands_only_when_one_runs():
    """cli.py's top level imports nothing of the package (``--help`` stays free of torch, see
    test_cli_startup), and each subcommand names an app module that defines ``command``."""
    assert import_graph(top_level_only=True)["torchwm_rl.app.cli"] == set()
    cli = ast.parse((ROOT / PACKAGE / "app" / "cli.py").read_text())
    table = next(node.value for node in cli.body if isinstance(node, ast.Assign)
                 and [getattr(t, "id", None) for t in node.targets] == ["COMMANDS"])
    commands = ast.literal_eval(table)
    assert set(commands) == {"demo", "train-model", "mbpo", "check"}
    for module in commands.values():
        tree = ast.parse((ROOT / PACKAGE / "app" / f"{module}.py").read_text())
        assert any(isinstance(node, ast.FunctionDef) and node.name == "command" for node in tree.body), module


def test_the_library_never_imports_the_app():
    graph = import_graph()
    for module, imported in sorted(graph.items()):
        if not module.startswith("torchwm_rl.app") and module not in APP_ENTRY_POINTS:
            assert not {m for m in imported if m.startswith("torchwm_rl.app")}, f"{module} imports the app"


MODULE_LIST_HEADING = "## The modules, room by room"


def _listed_modules() -> set[str]:
    """The module paths (under ``torchwm_rl/``) named in the first column of the module table
    of ``docs/design-decisions.md``."""
    text = (ROOT / "docs" / "design-decisions.md").read_text()
    assert MODULE_LIST_HEADING in text, f"docs/design-decisions.md has no section {MODULE_LIST_HEADING!r}"
    section = text.split(MODULE_LIST_HEADING, 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\|\s*`([\w/]+\.py)`\s*\|", section, re.MULTILINE)}


def test_the_design_notes_list_every_module():
    """Names only: the line counts beside them may drift between refreshes without failing."""
    actual = {str(path.relative_to(ROOT / PACKAGE)) for path in (ROOT / PACKAGE).rglob("*.py")}
    listed = _listed_modules()
    assert not actual - listed, f"modules missing from docs/design-decisions.md: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/design-decisions.md lists modules that do not exist: {sorted(listed - actual)}"
