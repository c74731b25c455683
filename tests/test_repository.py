"""The repository's shape: the library never imports the experiments, its import graph has no
cycle, and nothing points outside the repository."""

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("engine", "train", "jobs")


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module in the library packages."""
    out = {}
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {imported for imported in _imports(path) if imported in modules} - {name}
            for name, path in modules.items()}


@pytest.mark.parametrize("forbidden", ["toyworld", "matplotlib"])
def test_the_library_never_imports_the_toy_world(forbidden):
    offenders = {name: sorted(i for i in _imports(path) if i.split(".")[0] == forbidden)
                 for name, path in _modules().items()}
    assert not {name: found for name, found in offenders.items() if found}


def test_the_import_graph_has_no_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_file_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    me = Path(__file__).relative_to(ROOT).as_posix()
    outside = ("../" + "shared", "ALGORITHMS" + ".md", "DESIGN" + ".md")
    hits = []
    for name in tracked:
        path = ROOT / name
        if name == me or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}: {word}" for word in outside if word in text]
    assert not hits, "\n".join(hits)


def _tracked_text(suffixes: tuple[str, ...]) -> dict[str, str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return {name: (ROOT / name).read_text() for name in tracked if name.endswith(suffixes) and (ROOT / name).is_file()}


def test_every_reference_into_the_docs_resolves():
    """`docs/algorithms.md §N` names a section that exists; every test the docs name exists."""
    import re

    algorithms = (ROOT / "docs" / "algorithms.md").read_text()
    sections = set(re.findall(r"^## (\d+) ", algorithms, flags=re.MULTILINE))
    cited = {(name, number) for name, text in _tracked_text((".py", ".toml", ".md", ".yaml")).items()
             for number in re.findall(r"algorithms\.md §(\d+)", text)}
    assert {number for _, number in cited} <= sections, sorted(c for c in cited if c[1] not in sections)
    defined = {name for text in _tracked_text((".py",)).values() for name in re.findall(r"def (test_\w+)", text)}
    named = set()
    for doc in ("algorithms.md", "design.md"):
        named |= set(re.findall(r"\b(test_\w+)`", (ROOT / "docs" / doc).read_text()))
    named = {name for name in named if not name.endswith("_py")}
    assert named <= defined, sorted(named - defined)
