"""The package's import graph: no cycles, and every import points down the layers (STYLE: issue 11);
and the README's layout table lists every module, in layer order (``python tests/test_layers.py``
rewrites it).

Function-level imports count; imports under ``if TYPE_CHECKING:`` do not (they never run). The
layers, lowest first: the engine (every module at the top of the package: ``_core``,
``_reference``, ``_state``, ``_backend``, ``_constants``, ``_records``, ``errors``, ...) ->
``machine`` -> ``formats`` | ``guest`` (siblings that do not import each other) -> ``tools`` ->
``cli`` -> the package's facade (``nvemu/__init__.py``, ``__main__``). ``pyproject.toml`` states the same contract for
import-linter; this test also covers what import-linter does not check (cycles inside a layer).
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1] / "nvemu"     # the source tree (a pure run imports an install)
LAYERS = {"machine": 1, "formats": 2, "guest": 2, "tools": 3, "cli": 4}
FACADE = 5


def module_name(path: Path) -> str:
    parts = ["nvemu", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
MODULES.update({f"nvemu.{p.stem}": p for p in ROOT.glob("*.pyx")})


def layer(module: str) -> tuple[int, str]:
    """``(rank, name)`` of the layer ``module`` belongs to."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return FACADE, "facade"
    if parts[1] in LAYERS:
        return LAYERS[parts[1]], parts[1]
    return 0, "engine"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST):
    """Every import statement that can run (anywhere: module, class or function level)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            todo.append(child)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> set[str]:
    """The nvemu modules one import statement loads (submodules named by ``from X import sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
    out = set()
    for name in names:
        while name and name not in MODULES and "." in name:     # import nvemu.x.y where y is an attribute
            name = name.rsplit(".", 1)[0]
        if name in MODULES:
            out.add(name)
    return out


@functools.lru_cache(maxsize=None)
def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        if path.suffix == ".pyx":       # Cython: cimports are C-level; the core imports nothing of nvemu
            graph[name] = set()
            continue
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_resolve(name, is_package, n) for n in _runtime_imports(tree))) - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        rank, name = layer(src)
        for dst in sorted(targets):
            dst_rank, dst_name = layer(dst)
            if dst_rank > rank or (dst_rank == rank and dst_name != name):
                bad.append(f"{src} ({name}) imports {dst} ({dst_name})")
    return bad


def test_the_graph_sees_every_module_and_function_level_imports():
    graph = import_graph()
    assert "nvemu.machine.hypervisor" in graph and "nvemu._core" in graph
    assert "nvemu.formats.trace" in graph["nvemu.tools.prepare"]           # a package's __init__
    assert "nvemu._backend" in graph["nvemu.machine.platform"]              # from .. import _backend
    function_level = {"nvemu.formats.nfit", "nvemu.formats.trace"}
    assert function_level <= graph["nvemu.tools.cells"]                       # imported inside a function


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_only_point_down_the_layers():
    bad = upward_imports(import_graph())
    assert bad == [], "imports against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_cycles(source, expected):
    assert find_cycles(source) == expected


def test_the_layer_check_catches_an_upward_and_a_sideways_import():
    graph = {"nvemu.machine.vm": {"nvemu.tools.replayer", "nvemu.errors"},
             "nvemu.formats.trace.text": {"nvemu.guest.workloads"}, "nvemu.cli.main": {"nvemu.tools.sweep"}}
    assert upward_imports(graph) == [
        "nvemu.formats.trace.text (formats) imports nvemu.guest.workloads (guest)",
        "nvemu.machine.vm (machine) imports nvemu.tools.replayer (tools)"]


def test_type_checking_imports_do_not_count():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .hypervisor import H\n"
                     "def f():\n    from .vm import VM\n")
    found = [n.module for n in _runtime_imports(tree)]
    assert sorted(found) == ["typing", "vm"]


# ---- the README's layout table --------------------------------------------------------------------

README = ROOT.parent / "README.md"
ENGINE_ORDER = ("_core.pyx", "_core_kernels.pxi", "_core_state.pxi", "_core_memory.pxi", "_core_tables.pxi",
                "_core.pxd", "_core.pyi", "_reference.py", "_reference_memory.py", "_reference_tables.py", "_state.py",
                "_image.py", "_backend.py",
                "_constants.py", "_records.py", "_layout.py", "_files.py", "errors.py", "_version.py")
LAYER_TITLES = {0: "engine", 1: "machine", 2: "formats, guest", 3: "tools", 4: "cli", FACADE: "package"}
START, END = "<!-- layout table: python tests/test_layers.py -->", "<!-- end of layout table -->"


SOURCES = (".py", ".pyx", ".pxi", ".pxd", ".pyi")
"""What the package is written in: Python, and the core's Cython (``.pxi`` files are parts of ``_core.pyx``)."""


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring (a .pxd: of its leading comment), markup removed."""
    text = path.read_text()
    if path.suffix in (".pxd", ".pxi"):
        doc = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#")).strip()
    elif path.suffix == ".pyx":                          # Cython: not Python syntax; the leading string
        found = re.match(r'\s*(?:#[^\n]*\n\s*)*"""(.*?)"""', text, re.S)
        doc = found.group(1) if found else ""
    else:
        doc = ast.get_docstring(ast.parse(text)) or ""
    doc = " ".join(doc.split())
    first = re.split(r"(?<=[.!?])\s", doc, maxsplit=1)[0]
    first = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", first)
    return first.replace("``", "`").replace("|", "\\|")


def _order(path: Path) -> tuple:
    rel = path.relative_to(ROOT)
    rank = layer(module_name(path) if path.suffix == ".py" else f"nvemu.{path.stem}")[0]
    if rank == 0:
        return (0, ENGINE_ORDER.index(rel.name) if rel.name in ENGINE_ORDER else len(ENGINE_ORDER), str(rel))
    return (rank, rel.parts[:-1], rel.name != "__init__.py", str(rel))


def layout_table() -> str:
    files = [p for p in ROOT.rglob("*") if p.suffix in SOURCES and "__pycache__" not in p.parts]
    rows = [START, "", "| layer | module | what |", "|---|---|---|"]
    for path in sorted(files, key=_order):
        title = LAYER_TITLES[_order(path)[0]]
        rows.append(f"| {title} | `nvemu/{path.relative_to(ROOT).as_posix()}` | {_summary(path)} |")
    return "\n".join([*rows, "", END])


def _readme_table() -> str:
    text = README.read_text()
    return text[text.index(START):text.index(END) + len(END)] if START in text and END in text else ""


def test_readme_layout_table_lists_every_module_in_layer_order():
    assert _readme_table() == layout_table(), "the README's layout table is stale: python tests/test_layers.py"


if __name__ == "__main__":                      # rewrite the README's table
    text = README.read_text()
    old = _readme_table()
    if not old:
        sys.exit(f"{README}: no layout table markers ({START} ... {END})")
    README.write_text(text.replace(old, layout_table()))
    print(f"{README}: layout table of {layout_table().count(chr(10)) - 5} modules written")


LINE_LIMIT = 650
"""About 600 lines per module, the core's Cython files (``_core.pyx`` and each ``.pxi`` it includes) and
the reference model's modules too."""


def test_no_module_is_over_about_600_lines():
    big = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*") if p.suffix in SOURCES
           and (n := len(p.read_text().splitlines())) > LINE_LIMIT}
    assert big == {}, f"split these modules (over {LINE_LIMIT} lines): {big}"


def test_no_test_names_an_engine_by_hand():
    """Tests run on the engines the install has (conftest's ``backend`` fixture, ``ENGINES`` for the
    differential ones), so the pure run can run them all. Not counted: test_no_crash drives the
    compiled core itself (in a subprocess, skipped without it), test_core_contract checks which
    engine runs, and this file."""
    named = []
    for path in sorted((ROOT.parent / "tests").glob("test_*.py")):
        if path.name in ("test_no_crash.py", "test_core_contract.py", "test_layers.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("core", "reference"):
                named.append(f"{path.name}:{node.lineno}")
    assert named == [], f"use the backend fixture, conftest.ENGINES or DEFAULT_BACKEND: {named}"


def test_import_nvemu_loads_the_tools_only_when_asked():
    """``import nvemu`` (a machine and guest operations: the README's quick start) does not load the
    replay tools, trace formats or snapshots; their names on the package load them on first use."""
    code = ("import sys, nvemu\n"
            "print(sorted(m for m in sys.modules if m.startswith(('nvemu.tools', 'nvemu.formats', 'nvemu.guest',"
            " 'nvemu.machine.snapshot'))))\n"
            "from nvemu.tools.replayer import replay, Replayer, ReplayReport\n"
            "from nvemu.machine.snapshot import save_snapshot, restore_snapshot\n"
            "print(nvemu.replay is replay and nvemu.Replayer is Replayer and nvemu.ReplayReport is ReplayReport"
            " and nvemu.save_snapshot is save_snapshot and nvemu.restore_snapshot is restore_snapshot)\n"
            "print(all(hasattr(nvemu, n) for n in nvemu.__all__), set(nvemu.__all__) <= set(dir(nvemu)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["[]", "True", "True True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import nvemu
        nvemu.nope  # noqa: B018
