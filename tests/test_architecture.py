"""The package's shape: no module imports itself back, directly or around a loop.

The graph is read from the source with `ast`, every import counted wherever it stands (at the top,
inside a function, under `if TYPE_CHECKING:`): an import moved into a function to dodge a cycle at
load time is still a cycle in the design, and this test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from streamreplay.clientid import CLIENT_INFO, Client
from streamreplay.clients import DRIVERS
from streamreplay.repro import REFERENCE_CLIENTS

PACKAGE = Path(__file__).resolve().parent.parent / "streamreplay"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` where c is a name: the module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, set(known)) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as one loop through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [loop(graph, set(group)) for group in groups]


def loop(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """One path a -> ... -> a inside a strongly connected group, to print."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return sorted(group)


def test_the_graph_sees_relative_function_level_and_type_checking_imports(tmp_path: Path):
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    source = tmp_path / "c.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "from .. import a\n"
                      "if TYPE_CHECKING:\n    from pkg.b import Thing\n"
                      "def f():\n    import pkg.sub\n    from . import c\n")
    assert imported("pkg.sub.c", source, known) == {"pkg.a", "pkg.b", "pkg.sub"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "streamreplay.diagnose" in graph and "streamreplay.replay.server" in graph
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_one_client_vocabulary():
    """`Client` names every client once: its id (repro, repro.py --client, template files) and its label
    (tables, `streamreplay client`, `matrix`); either spelling is taken where a name comes in."""
    assert list(CLIENT_INFO) == list(Client)
    assert [c.label for c in DRIVERS if c.info.dialect == "chat"] == ["openai sync", "openai async",
                                                                       "autogen-agentchat", "AG2"]
    assert REFERENCE_CLIENTS == ("openai-sync", "openai-async", "autogen-agentchat", "ag2", "http")
    for client in Client:
        assert Client.parse(client.value) is Client.parse(client.label) is client
        assert (PACKAGE / "repro_templates" / f"{client}.tmpl").is_file()
    chat = [c for c in DRIVERS if c.info.dialect == "chat"]
    with pytest.raises(ValueError, match="unknown client 'langchain'; known: openai sync, openai async, "
                                         "autogen-agentchat, AG2"):
        Client.parse("langchain", among=chat)
