"""A closed connection is freed by reference counting, not left as cyclic garbage.

Why it matters: bridge/ops/gc_tuning.py freezes the heap, so whatever dies in a reference
cycle waits for a full collection, which pauses a bridge of 10,000 viewers for seconds
(issue 14, bench/FINDINGS.md "What dies while frozen"). bridge/server/hypercorn_cycles.py cuts
Hypercorn's (and asyncio's) cycles once a connection's ``TCPServer.run()`` returned.

Each test serves the real bridge (Hypercorn on loopback, the GC tuner off), opens a few
connections from a worker thread with blocking sockets (a client that leaves no Python
garbage of its own), collects, closes them by FIN or by reset, waits on the bridge's own
state until every connection has ended, and collects again with ``DEBUG_SAVEALL``:
whatever that finds died in a cycle when the connections closed.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections import Counter

import pytest
from hypercorn.config import Config

from bridge.demo.legacy_api import LegacyApi
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

VIEWERS = 6
#: Seconds a viewer's socket waits on the bridge.
TIMEOUT = 10.0
#: What a connection is made of, below the request: none of it may be left to the collector.
CONNECTION_TYPES = frozenset(
    {
        "hypercorn.asyncio.tcp_server.TCPServer",
        "hypercorn.protocol.ProtocolWrapper",
        "asyncio.streams.StreamReader",
        "asyncio.streams.StreamWriter",
        "asyncio.streams.StreamReaderProtocol",
        "asyncio.selector_events._SelectorSocketTransport",
        "socket.socket",
        "ConnectionResetError",
    }
)


# --- the measurement ----------------------------------------------------------------


@pytest.fixture
def short_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypercorn keeps a connection whose client left between requests until its
    keep-alive timeout (75 s in the bridge): make that 0.5 s, so the test waits for it (and
    the idle connections of the short path outlive their opening)."""
    configure = server.hypercorn_config

    def configured(settings: Settings, sock: socket.socket) -> Config:
        config = configure(settings, sock)
        config.keep_alive_timeout = 0.5
        return config

    monkeypatch.setattr(server, "hypercorn_config", configured)


async def garbage_of_closing(legacy: LegacyApi, path: PathName, how: CloseHow) -> Counter[str]:
    """Types (and counts) of what died in cycles when VIEWERS connections closed."""
    legacy.scripted(RUN)
    async with running_bridge(
        legacy.url,
        poll_interval=30.0,  # the first status at once, no poll while measuring
        linger=30.0,  # the poller outlives its viewers (its own stop is not measured)
        direct_writes=path != "asgi",
    ) as b:
        port = int(b.url.rsplit(":", 1)[1])
        # The readiness check's connection ends first (at the keep-alive timeout).
        await wait_for(lambda: connections() == 0)
        socks = await asyncio.to_thread(open_viewers, port, path, VIEWERS, TIMEOUT)
        if path == "fast":
            await wait_for(lambda: open_streams(b, "bridge_fast_path_streams") == VIEWERS)
        elif path == "asgi":
            await wait_for(lambda: open_streams(b) == VIEWERS)
        await wait_for(lambda: connections() == VIEWERS)
        gc.collect()
        with collector_paused():
            await asyncio.to_thread(close_viewers, socks, how)
            await wait_for(lambda: open_streams(b) == 0 and connections() == 0)
            garbage = saved_garbage()
    try:
        return Counter(type_name(o) for o in garbage)
    finally:
        del garbage


CASES = [(p, c) for p in ("fast", "asgi", "short") for c in ("fin", "rst")]


@pytest.mark.usefixtures("short_keep_alive")
@pytest.mark.parametrize(("path", "how"), CASES)
async def test_a_closed_connection_is_freed_by_refcount(
    legacy: LegacyApi, path: PathName, how: CloseHow
) -> None:
    """Hypercorn's connection objects, the streams, transport, socket and a reset's
    traceback are never cyclic garbage, on every path the bridge serves."""
    found = await garbage_of_closing(legacy, path, how)
    left = {name: n for name, n in found.items() if name in CONNECTION_TYPES}
    assert hypercorn_cycles.stats.off is None
    assert left == {}, f"left to the collector: {left}; all cyclic garbage: {dict(found)}"


@pytest.mark.usefixtures("short_keep_alive")
@pytest.mark.parametrize(
    ("path", "how"),
    CASES,
)
async def test_closing_leaves_no_cyclic_garbage_at_all(
    legacy: LegacyApi, path: PathName, how: CloseHow
) -> None:
    found = await garbage_of_closing(legacy, path, how)
    assert found == Counter(), f"cyclic garbage per {VIEWERS} closed connections: {dict(found)}"


@pytest.mark.parametrize(
    ("path", "how"), [(p, c) for p in ("fast", "asgi") for c in ("fin", "rst")]
)
async def test_a_stream_whose_viewer_left_ends_its_connection_at_once(
    legacy: LegacyApi, path: PathName, how: CloseHow
) -> None:
    """Hypercorn keeps a connection whose response was completed as an idle keep-alive
    connection for its keep-alive timeout (75 s here), holding everything the connection
    refers to, even when its client is gone: the bridge does not complete the response of
    a viewer who left, so the connection ends as soon as the viewer does."""
    legacy.scripted(RUN)
    async with running_bridge(
        legacy.url, poll_interval=30.0, linger=30.0, direct_writes=path != "asgi"
    ) as b:
        port = int(b.url.rsplit(":", 1)[1])
        socks = await asyncio.to_thread(open_viewers, port, path, VIEWERS, TIMEOUT)
        await wait_for(lambda: open_streams(b) == VIEWERS)
        released = hypercorn_cycles.stats.released
        await asyncio.to_thread(close_viewers, socks, how)
        await wait_for(lambda: hypercorn_cycles.stats.released - released == VIEWERS, timeout=10)
        assert open_streams(b) == 0


def test_an_unchecked_hypercorn_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hypercorn.asyncio.tcp_server import TCPServer

    installed = hypercorn_cycles._original is not None
    hypercorn_cycles.uninstall()
    run = TCPServer.run
    monkeypatch.setattr(hypercorn_cycles, "installed_hypercorn", lambda: "0.19.0")
    monkeypatch.setattr(hypercorn_cycles, "_warned", False)
    try:
        assert hypercorn_cycles.install() is False
        assert TCPServer.run is run
        assert "outside the checked range" in (hypercorn_cycles.stats.off or "")
        assert "cycles of closed connections are left to the collector" in caplog.text
    finally:
        monkeypatch.undo()
        hypercorn_cycles.stats.off = None
        if installed:
            hypercorn_cycles.install()


def test_release_never_raises_into_hypercorn() -> None:
    class Odd:
        @property
        def reader(self) -> object:
            raise RuntimeError("moved")

    failed = hypercorn_cycles.stats.failed
    hypercorn_cycles.release(Odd())
    assert hypercorn_cycles.stats.failed == failed + 1
