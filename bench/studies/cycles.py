"""What a closed connection leaves to the cyclic garbage collector (issue 14).

Every object that dies in a reference cycle while ``bridge/ops/gc_tuning.py`` keeps the heap
frozen is freed only by a full collection, whose pause grows with the live heap (2-3 s
at 10,000 viewers). This measures that garbage directly, in one process, on loopback:

1. the real bridge (Hypercorn serving the app, ``tests/support.running_bridge``, the GC
   tuner off: ``BRIDGE_GC_FREEZE_INTERVAL=0``) in front of the simulated legacy API,
   one scripted run that stays running;
2. N viewers opened from a worker thread with plain blocking sockets (the client leaves
   no Python garbage of its own), waited for by the bridge's own gauges;
3. a full ``gc.collect()``, then the collector off; the viewers close, all by FIN
   (``shutdown(SHUT_WR)``, then read to the server's close) or all by reset
   (``SO_LINGER`` 0); wait until the bridge's open-stream gauge is 0 and every
   Hypercorn connection task has ended (Hypercorn's keep-alive timeout is 5 s here, not
   the bridge's 75 s: a connection whose response was complete when its client left is
   kept that long);
4. ``gc.collect()`` with ``DEBUG_SAVEALL``: everything it finds died in a cycle since
   step 3. Reported per closed connection, by type, and one cycle per kind of object
   (the shortest path from the object back to itself, edge by edge).

A control does steps 3-4 with nothing closing, for what the process leaves anyway.

Paths: ``fast`` (HTTP/1.1 stream on the fast path), ``asgi`` (the same with
``BRIDGE_DIRECT_WRITES=false``), ``short`` (three keep-alive ``GET /healthz`` on a
connection, then the close: Quart's path). Each is measured without and with the
Hypercorn hook (``bridge/server/hypercorn_cycles.py``).

    bench/run cycles [--streams 200] [--paths fast,asgi,short]
        [--closes fin,rst] [--cycles 6] [--out bench/results/cycles.md]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sys
import time
import types
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypercorn.config import Config

from bench.harness import cli
from bridge.demo.legacy_api import LegacyApi, serving
from bridge.server import hypercorn_cycles
from bridge.server import serve as server
from bridge.settings import Settings
from tests.closing import (
    RUN,
    CloseHow,
    PathName,
    close_viewers,
    collector_paused,
    connections,
    open_streams,
    open_viewers,
    saved_garbage,
    type_name,
)
from tests.support import running_bridge, wait_for

#: How long a wait on the bridge may take before the bench gives up (bounded run time).
WAIT = 30.0
#: Hypercorn's keep-alive timeout here (seconds); see ``measure``.
KEEP_ALIVE = 5.0


@dataclass
class Measured:
    path: PathName
    close: CloseHow
    hooked: bool
    connections: int
    garbage: list[Any] = field(repr=False)
    control: int = 0

    @property
    def per_connection(self) -> float:
        return len(self.garbage) / self.connections

    @property
    def kib_per_connection(self) -> float:
        """Shallow sizes (``sys.getsizeof``) of the garbage, per connection."""
        return sum(sys.getsizeof(o) for o in self.garbage) / 1024 / self.connections

    def by_type(self) -> Counter[str]:
        return Counter(type_name(o) for o in self.garbage)


# --- the cycles -------------------------------------------------------------------------


def edge(source: object, target: object) -> str:
    """How ``source`` refers to ``target``, as it would be written in code."""
    if isinstance(source, dict):
        for key, value in source.items():
            if value is target:
                return f"[{key!r}]"
            if key is target:
                return "<key>"
    if isinstance(source, (list, tuple)):
        for i, value in enumerate(source):
            if value is target:
                return f"[{i}]"
    try:
        attributes = vars(source)
    except TypeError:
        attributes = {}
    for name, value in attributes.items():
        if value is target:
            return f".{name}"
    if isinstance(source, types.FrameType):
        for name, value in source.f_locals.items():
            if value is target:
                return f".f_locals[{name!r}] ({source.f_code.co_qualname})"
    for attr in (
        "__dict__",
        "__self__",
        "__func__",
        "cell_contents",
        "tb_frame",
        "tb_next",
        "f_back",
        "__traceback__",
        "__context__",
        "__cause__",
        "gi_frame",
        "cr_frame",
        "ag_frame",
        "__closure__",
        "args",
        "keywords",
        "func",
    ):
        try:
            if getattr(source, attr, None) is target:
                return f".{attr}"
        except Exception:
            continue
    for slot in getattr(type(source), "__slots__", ()):
        if getattr(source, slot, None) is target:
            return f".{slot}"
    return " -> "


def label(obj: object) -> str:
    if isinstance(obj, types.FrameType):
        return f"frame({obj.f_code.co_qualname})"
    if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
        owner = getattr(obj, "__self__", None)
        return f"bound {type(owner).__name__}.{getattr(obj, '__name__', '?')}"
    if isinstance(obj, (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)):
        return f"{type(obj).__name__}({obj.__qualname__})"
    if isinstance(obj, types.FunctionType):
        return f"function({obj.__qualname__})"
    return type_name(obj)


def shortest_cycle(start: object, members: dict[int, object]) -> list[object] | None:
    """The shortest path start -> ... -> start through the garbage (breadth first)."""
    parents: dict[int, int] = {}
    frontier = [start]
    seen = {id(start)}
    while frontier:
        nxt = []
        for obj in frontier:
            for ref in gc.get_referents(obj):
                if ref is start:
                    path = [obj]
                    while id(path[-1]) in parents:
                        path.append(members[parents[id(path[-1])]])
                    return (
                        [start, *reversed(path[:-1]), start]
                        if len(path) > 1
                        else [start, obj, start]
                    )
                if id(ref) in members and id(ref) not in seen:
                    seen.add(id(ref))
                    parents[id(ref)] = id(obj)
                    nxt.append(ref)
        frontier = nxt
    return None


def render_cycle(chain: list[object]) -> str:
    """One cycle, with instance dicts folded into their attribute (``a.x`` not ``a -> dict``)."""
    parts = [label(chain[0])]
    i = 0
    while i < len(chain) - 1:
        source, target = chain[i], chain[i + 1]
        if (
            isinstance(target, dict)
            and getattr(source, "__dict__", None) is target
            and i + 2 < len(chain)
        ):
            key = edge(target, chain[i + 2])
            attr = key[2:-2] if key.startswith("['") else key
            parts.append(f".{attr} -> {label(chain[i + 2])}")
            i += 2
            continue
        parts.append(f"{edge(source, target)} -> {label(target)}")
        i += 1
    return " ".join(parts)


def components(garbage: list[Any]) -> list[list[Any]]:
    """The reference cycles in ``garbage``: its strongly connected components of more
    than one object (or one that refers to itself), by Tarjan's algorithm, iteratively."""
    members = {id(o): o for o in garbage}
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    found: list[list[Any]] = []
    counter = 0
    for root in garbage:
        if id(root) in index:
            continue
        work: list[tuple[int, Iterator[Any]]] = []
        index[id(root)] = low[id(root)] = counter
        counter += 1
        stack.append(id(root))
        on_stack.add(id(root))
        work.append((id(root), iter(gc.get_referents(root))))
        while work:
            node, refs = work[-1]
            advanced = False
            for ref in refs:
                if id(ref) not in members:
                    continue
                if id(ref) not in index:
                    index[id(ref)] = low[id(ref)] = counter
                    counter += 1
                    stack.append(id(ref))
                    on_stack.add(id(ref))
                    work.append((id(ref), iter(gc.get_referents(ref))))
                    advanced = True
                    break
                if id(ref) in on_stack:
                    low[node] = min(low[node], index[id(ref)])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(members[top])
                    if top == node:
                        break
                only = component[0]
                if len(component) > 1 or any(r is only for r in gc.get_referents(only)):
                    found.append(component)
    return found


#: Plain containers and callables: a cycle is named by the other objects on it.
PLAIN = frozenset(
    {
        "dict",
        "list",
        "tuple",
        "set",
        "method",
        "cell",
        "function",
        "collections.deque",
        "builtin_function_or_method",
        "_contextvars.Context",
        "_asyncio.Future",
    }
)


def signature(component: list[Any]) -> str:
    names = sorted({type_name(o) for o in component} - PLAIN)
    return ", ".join(short(n) for n in names) or ", ".join(
        sorted({type_name(o) for o in component})
    )


def short(name: str) -> str:
    for prefix in ("hypercorn.", "asyncio.", "bridge.", "quart.", "werkzeug."):
        if name.startswith(prefix):
            return prefix.rstrip(".") + ":" + name.rsplit(".", 1)[-1]
    return name


def anchor(component: list[Any]) -> Any:
    """The member a cycle is best shown from: a named class before a plain container."""
    for prefix in ("hypercorn.", "bridge.", "quart.", "asyncio.", ""):
        for obj in component:
            name = type_name(obj)
            if name not in PLAIN and name.startswith(prefix):
                return obj
    return component[0]


def cycles(garbage: list[Any], connections: int, limit: int) -> list[str]:
    """Each kind of cycle (named by the types on it): how many per connection, its size,
    and one sample, edge by edge."""
    kinds: dict[str, list[list[Any]]] = {}
    for component in components(garbage):
        kinds.setdefault(signature(component), []).append(component)
    on_cycles = sum(len(c) for cs in kinds.values() for c in cs)
    lines = [
        f"{on_cycles / connections:.1f} objects per connection are on cycles, "
        f"{(len(garbage) - on_cycles) / connections:.1f} only hang off them:",
        "",
    ]
    ranked = sorted(kinds.items(), key=lambda kv: -sum(len(c) for c in kv[1]))
    for name, found in ranked[:limit]:
        sample = found[0]
        members = {id(o): o for o in sample}
        chain = shortest_cycle(anchor(sample), members)
        shown = render_cycle(chain) if chain is not None else "?"
        lines.append(
            f"- {len(found) / connections:.2f} per connection, {len(sample)} objects "
            f"[{name}]: `{shown}`"
        )
    if len(ranked) > limit:
        lines.append(f"- and {len(ranked) - limit} more kinds")
    return lines


# --- one measurement ----------------------------------------------------------------------


async def measure(
    legacy: LegacyApi, path: PathName, close: CloseHow, n: int, hooked: bool
) -> Measured:
    install = hypercorn_cycles.install
    configure = server.hypercorn_config

    def short_keep_alive(settings: Settings, sock: socket.socket) -> Config:
        # A connection whose response was complete when its client left (every reset
        # one, every short one) is kept by Hypercorn until its keep-alive timeout (75 s
        # in the bridge), then dies: wait 5 s for that instead (long enough for the
        # short path's idle connections to outlive their opening).
        config = configure(settings, sock)
        config.keep_alive_timeout = KEEP_ALIVE
        return config

    server.hypercorn_config = short_keep_alive  # type: ignore[assignment]
    if not hooked:
        hypercorn_cycles.uninstall()
        hypercorn_cycles.install = lambda: False  # type: ignore[assignment]
    try:
        async with running_bridge(
            legacy.url,
            poll_interval=30.0,  # one poll at the first viewer, none while measuring
            direct_writes=path != "asgi",
            max_streams_per_client=n + 10,
        ) as b:
            port = int(b.url.rsplit(":", 1)[1])
            # Warm up: the channel, the upstream connection, lazily built objects.
            warm = await asyncio.to_thread(open_viewers, port, path, 2, WAIT)
            await asyncio.to_thread(close_viewers, warm, "fin")
            await wait_for(lambda: open_streams(b) == 0 and connections() == 0, WAIT)

            socks = await asyncio.to_thread(open_viewers, port, path, n, WAIT)
            if path == "fast":
                await wait_for(lambda: open_streams(b, "bridge_fast_path_streams") == n, WAIT)
            elif path == "asgi":
                await wait_for(lambda: open_streams(b) == n, WAIT)
            # All n still open (an idle one would end at the keep-alive timeout).
            await wait_for(lambda: connections() == n, WAIT)
            gc.collect()
            with collector_paused():
                started = time.monotonic()
                await asyncio.to_thread(close_viewers, socks, close)
                await wait_for(lambda: open_streams(b) == 0 and connections() == 0, WAIT)
                took = time.monotonic() - started
                garbage = saved_garbage()
            # The control: as long again with nothing closing.
            with collector_paused():
                await asyncio.sleep(took)
                control = len(saved_garbage())
    finally:
        hypercorn_cycles.install = install  # type: ignore[method-assign]
        server.hypercorn_config = configure  # type: ignore[method-assign]
    return Measured(path, close, hooked, n, garbage, control)


# --- the report ---------------------------------------------------------------------------


def report(results: list[Measured], top: int, cycle_limit: int, command: str) -> str:
    lines = [
        "# Cyclic garbage per closed connection (bench/studies/cycles.py)",
        "",
        f"`{command}`, Python "
        f"{sys.version.split()[0]}, Hypercorn {hypercorn_cycles.installed_hypercorn()}. "
        "Objects a full `gc.collect()` found dead in reference cycles after the viewers "
        "closed, divided by the connections closed; the control is the same wait with "
        "nothing closing (whole process, not per connection).",
        "",
        "| path | close | hook | connections | cyclic objects | per connection | KiB per "
        "connection (shallow) | control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.path} | {r.close} | {'on' if r.hooked else 'off'} | {r.connections} | "
            f"{len(r.garbage)} | {r.per_connection:.1f} | {r.kib_per_connection:.1f} | "
            f"{r.control} |"
        )
    for r in results:
        if not r.garbage:
            continue
        lines += [
            "",
            f"## {r.path}, {r.close}, hook {'on' if r.hooked else 'off'}: "
            f"{r.per_connection:.1f} objects per connection",
            "",
            "| type | per connection |",
            "|---|---|",
        ]
        for name, count in r.by_type().most_common(top):
            lines.append(f"| `{name}` | {count / r.connections:.2f} |")
        lines += ["", "Cycles (one sample of each kind, shortest path back to the object):", ""]
        lines += cycles(r.garbage, r.connections, cycle_limit)
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> list[Measured]:
    results = []
    async with serving(LegacyApi(step=1.0, seed=1)) as legacy:
        legacy.scripted(RUN)
        for path in args.paths:
            for close in args.closes:
                for hooked in (False, True):
                    results.append(await measure(legacy, path, close, args.streams, hooked))
                    r = results[-1]
                    print(
                        f"{path:5} {close} hook={'on ' if hooked else 'off'} "
                        f"{r.per_connection:7.1f} objects/connection (control {r.control})",
                        flush=True,
                    )
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.parser("cycles", __doc__)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--paths", type=cli.comma_list(str), default=["fast", "asgi", "short"])
    parser.add_argument("--closes", type=cli.comma_list(str), default=["fin", "rst"])
    parser.add_argument("--top", type=int, default=25, help="types listed per measurement")
    parser.add_argument("--cycles", type=int, default=8, help="cycles shown per measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    text = report(results, args.top, args.cycles, cli.command_line("cycles", argv))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
