"""The structure docs/ARCHITECTURE.md promises: no import cycle, seams where it says."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bridge"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Every module named in an import of ``path``, at any depth (late imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from bridge import sse` imports the module bridge.events.sse.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports_of(path) if m in modules and m != name}
        # Importing bridge.a.b runs bridge/a/__init__.py first (unless we are inside it).
        edges[name] |= {
            parent
            for m in edges[name]
            for i in range(2, m.count(".") + 1)
            if (parent := ".".join(m.split(".")[:i])) in modules
            and not (name + ".").startswith(parent + ".")
        }
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_bridge_modules() -> None:
    edges = graph()
    assert edges.get("bridge.web.app")  # the graph is really read
    assert find_cycle(edges) is None


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        # The hub and channels know a small Sink protocol, not the fast path.
        ("bridge.events.channel", "bridge.streams.direct"),
        ("bridge.events.hub", "bridge.streams.direct"),
        # The poll loop knows the ledger seam, not what is behind it.
        ("bridge.polling.poller", "bridge.cluster"),
        ("bridge.polling.registry", "bridge.cluster"),
        ("bridge.polling.ledger", "bridge.cluster"),
        # The dashboard is a page; the API is registered by the app.
        ("bridge.web.dashboard", "bridge.streams.multi"),
        ("bridge.web.dashboard", "bridge.web.app"),
        # The production server does not borrow from the demo.
        ("bridge.server.serve", "bridge.demo"),
        ("bridge.web.app", "bridge.demo"),
    ],
)
def test_seams(module: str, must_not_import: str) -> None:
    edges = graph()
    assert module in edges
    assert not any(
        m == must_not_import or m.startswith(must_not_import + ".") for m in edges[module]
    )


def test_only_the_server_modules_touch_hypercorn() -> None:
    users = {
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if any(m == "hypercorn" or m.startswith("hypercorn.") for m in imports_of(path))
    }
    assert users <= {
        "bridge.server.serve",
        "bridge.server.hypercorn_transport",
        "bridge.server.hypercorn_cycles",
    }
