"""The structure docs/ARCHITECTURE.md promises: no import cycle, and per-package rules.

Each rule says which part of ``bridge`` must not import which other part (or library).
A rule whose name is in ``PENDING`` describes a seam that does not hold yet: the test
checks that it is still broken, so that it is switched on (its name taken out of
``PENDING``) as soon as it holds, and from then on it guards against regressions.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bridge"

#: The request path: what runs while the bridge serves. The CLI, the tools and the demo
#: sit on top of it and may import it; it never imports them.
SERVING = (
    "bridge.web",
    "bridge.streams",
    "bridge.events",
    "bridge.polling",
    "bridge.server",
    "bridge.cluster",
    "bridge.ops",
    "bridge.settings",
    "bridge.profiles",
    "bridge.expressions",
    "bridge.errors",
    "bridge.tasks",
    "bridge.run_id",
    "bridge.credentials",
)
#: Everything the web package is built on (web itself, with the container that assembles
#: the app, and the server that serves it are above this line).
BELOW_WEB = (
    "bridge.streams",
    "bridge.events",
    "bridge.polling",
    "bridge.cluster",
    "bridge.ops",
    "bridge.settings",
    "bridge.profiles",
    "bridge.expressions",
    "bridge.errors",
    "bridge.tasks",
    "bridge.run_id",
    "bridge.credentials",
)


@dataclass(frozen=True)
class Rule:
    """Modules under any of ``importers`` (less ``exempt``) import nothing under
    ``forbidden`` (bridge modules or other libraries, named as in an import)."""

    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    why: str
    exempt: tuple[str, ...] = ()


RULES = (
    Rule(
        "events-below-streams-and-web",
        ("bridge.events",),
        ("bridge.streams", "bridge.web", "bridge.server"),
        "history, channels and the hub know a small Sink protocol, not who reads them",
    ),
    Rule(
        "events-below-polling",
        ("bridge.events",),
        ("bridge.polling",),
        "the poll loop publishes events; events do not read statuses back",
    ),
    Rule(
        "only-server-touches-hypercorn",
        ("bridge",),
        ("hypercorn",),
        "Hypercorn is reached through server/ only (its public seams and the fenced hacks)",
        exempt=("bridge.server",),
    ),
    Rule(
        "polling-not-cluster",
        ("bridge.polling",),
        ("bridge.cluster",),
        "the poll loop knows the ledger seam, not what is behind it",
    ),
    Rule(
        "serving-path-not-tools-or-demo",
        SERVING,
        ("bridge.tools", "bridge.demo", "bridge.cli"),
        "the CLI tools and the demo use the bridge; the bridge never borrows from them",
    ),
    Rule(
        "streams-not-web",
        ("bridge.streams",),
        ("bridge.web",),
        "web opens streams; streams do not know the routes or the front",
    ),
    Rule(
        "nothing-below-web-imports-web",
        BELOW_WEB,
        ("bridge.web",),
        "web is the HTTP surface on top of the streams, events and polls",
    ),
    Rule(
        "nothing-below-server-imports-server",
        (*BELOW_WEB, "bridge.web"),
        ("bridge.server",),
        "server/ serves the app; the app and what it is built on never reach up into it",
    ),
    Rule(
        "dashboard-is-a-page",
        ("bridge.web.dashboard",),
        ("bridge.streams.multi", "bridge.web.app"),
        "the dashboard is a page; the API it reads is registered by the app",
    ),
)

#: Two packages (or top-level modules, such as bridge.settings) import each other only
#: as a pair ``"a <-> b"`` listed here, for now.
#:
#: PENDING: the rules (by name) and pairs that a restructuring in progress makes true.
#: Each is checked to be still broken; once it holds, the test says so and its line goes.
#: Empty: every rule holds, and no two packages import each other.
PENDING: frozenset[str] = frozenset()


# --- reading the imports -------------------------------------------------------------


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module named in an import of ``module`` at any depth (late imports and
    imports only for type checking count too), relative imports resolved."""
    names: set[str] = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            elif node.module:
                stem = node.module
            else:
                continue
            names.add(stem)
            # `from bridge.events import sse` imports the module bridge.events.sse.
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    return names


def imports_of(path: pathlib.Path) -> set[str]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def read_imports() -> dict[str, set[str]]:
    """Each bridge module and every name it imports (bridge's and other libraries')."""
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def graph(imports: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Module -> the bridge modules it imports, packages whose __init__ that runs included."""
    imports = read_imports() if imports is None else imports
    modules = set(imports)
    edges: dict[str, set[str]] = {}
    for name, named in imports.items():
        edges[name] = {m for m in named if m in modules and m != name}
        # Importing bridge.a.b runs bridge/a/__init__.py first (unless we are inside it).
        edges[name] |= {
            parent
            for m in edges[name]
            for i in range(2, m.count(".") + 1)
            if (parent := ".".join(m.split(".")[:i])) in modules
            and not (name + ".").startswith(parent + ".")
        }
    return edges


# --- the checks ----------------------------------------------------------------------


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(rule: Rule, imports: dict[str, set[str]]) -> list[str]:
    """``"importer -> imported"`` for every import that breaks ``rule``."""
    found = []
    for module in sorted(imports):
        if not any(under(module, p) for p in rule.importers):
            continue
        if any(under(module, p) for p in rule.exempt):
            continue
        for name in sorted(imports[module]):
            if any(under(name, p) for p in rule.forbidden):
                found.append(f"{module} -> {name}")
    return found


def unit_of(module: str) -> str:
    """The package (bridge.events) or top-level module (bridge.settings) a module is in."""
    return ".".join(module.split(".")[:2])


def mutual_pairs(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Pairs of units (sorted) with imports both ways between them."""
    between = {(unit_of(a), unit_of(b)) for a, targets in edges.items() for b in targets} - {
        (u, u) for u in map(unit_of, edges)
    }
    return {(a, b) for a, b in between if a < b and (b, a) in between}


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


# --- the checker itself ----------------------------------------------------------------


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_rule_catches_an_import_of_a_forbidden_package() -> None:
    imports = {
        "bridge.events.hub": {"bridge.events.sse", "bridge.streams.direct.Sink"},
        "bridge.events.sse": {"json"},
        "bridge.eventsx.other": {"bridge.streams"},  # a name that only starts alike
        "bridge.streams.direct": {"bridge.events.hub"},
    }
    rule = Rule("r", ("bridge.events",), ("bridge.streams",), "")
    assert violations(rule, imports) == ["bridge.events.hub -> bridge.streams.direct.Sink"]
    assert violations(Rule("r", ("bridge.events",), ("json",), ""), imports) == [
        "bridge.events.sse -> json"
    ]
    exempt = Rule("r", ("bridge",), ("json",), "", exempt=("bridge.events",))
    assert violations(exempt, imports) == []


def test_relative_imports_are_resolved() -> None:
    source = "from ..streams import direct\nfrom . import sse\nfrom .hub import Hub\n"
    assert imports_in(source, "bridge.events.channel") == {
        "bridge.streams",
        "bridge.streams.direct",
        "bridge.events",
        "bridge.events.sse",
        "bridge.events.hub",
        "bridge.events.hub.Hub",
    }
    assert "bridge.events.sse" in imports_in("from . import sse", "bridge.events", True)
    late = "def f() -> None:\n    import hypercorn.config\n"
    assert imports_in(late, "bridge.x") == {"hypercorn.config"}


def test_mutual_imports_between_packages_are_found() -> None:
    edges = {
        "bridge.events.channel": {"bridge.polling.status"},
        "bridge.events.hub": {"bridge.events.channel"},
        "bridge.polling.poller": {"bridge.events.hub", "bridge.settings"},
        "bridge.polling.status": set(),
        "bridge.settings": set(),
    }
    assert mutual_pairs(edges) == {("bridge.events", "bridge.polling")}
    edges["bridge.events.channel"] = set()
    assert mutual_pairs(edges) == set()


def test_every_rule_names_what_exists() -> None:
    """A misspelt package would make a rule hold for nothing."""
    imports = read_imports()
    named = set().union(*imports.values())
    for rule in RULES:
        for prefix in rule.importers + rule.exempt:
            assert any(under(m, prefix) for m in imports), (rule.name, prefix)
        for prefix in rule.forbidden:
            assert any(under(m, prefix) for m in imports | dict.fromkeys(named)), (
                rule.name,
                prefix,
            )
    units = {unit_of(m) for m in imports}
    rules = {r.name for r in RULES}
    assert len(rules) == len(RULES)
    for name in PENDING - rules:
        a, sep, b = name.partition(" <-> ")
        assert sep and a < b and {a, b} <= units, name


# --- the rules on bridge/ ----------------------------------------------------------------


def test_no_import_cycle_among_bridge_modules() -> None:
    edges = graph()
    assert edges.get("bridge.web.app")  # the graph is really read
    assert find_cycle(edges) is None


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_package_rule(rule: Rule) -> None:
    found = violations(rule, read_imports())
    if rule.name in PENDING:
        assert found, f"{rule.name} holds now: take it out of PENDING"
    else:
        assert not found, f"{rule.name} ({rule.why}): " + "; ".join(found)


def test_packages_import_each_other_only_where_pending() -> None:
    found = {f"{a} <-> {b}" for a, b in mutual_pairs(graph())}
    pending = {name for name in PENDING if " <-> " in name}
    assert found <= pending, f"imports both ways: {sorted(found - pending)}"
    resolved = pending - found
    assert not resolved, f"one way now, take out of PENDING: {sorted(resolved)}"
