"""Closing connections and finding what died in cycles: shared by tests/test_cycles.py
and bench/studies/cycles.py (which measure the same thing, one to assert, one to report).

The client is plain blocking sockets, run in a worker thread: it leaves no Python garbage
of its own in the bridge's process. The collector helpers save what a collection finds
(``DEBUG_SAVEALL``) instead of freeing it, so it can be counted and named.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from tests.support import RunningBridge

#: fast: an HTTP/1.1 stream on the fast path; asgi: the same through ASGI
#: (BRIDGE_DIRECT_WRITES=false); short: three keep-alive ``GET /healthz``, then the close.
PathName = Literal["fast", "asgi", "short"]
CloseHow = Literal["fin", "rst"]
#: The scripted run every stream watches.
RUN = "cycles"


def type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# --- the client: blocking sockets in a worker thread ----------------------------------


def request_bytes(path: PathName) -> bytes:
    if path == "short":
        return b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    return (
        f"GET /v1/runs/{RUN}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()


def read_until(sock: socket.socket, marker: bytes, have: bytes = b"") -> bytes:
    while marker not in have:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before " + repr(marker))
        have += data
    return have


def open_viewers(port: int, path: PathName, n: int, timeout: float) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if path == "short":
            for _ in range(3):  # keep-alive: three answers on one connection
                sock.sendall(request_bytes(path))
                read_until(sock, b'"ok"}')
        else:
            sock.sendall(request_bytes(path))
            read_until(sock, b"event: progress")  # the stream is open, its first event out
        socks.append(sock)
    return socks


def close_viewers(socks: list[socket.socket], how: CloseHow) -> None:
    for sock in socks:
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        else:
            sock.shutdown(socket.SHUT_WR)
    if how == "fin":
        # A close with unread data would be a reset: read to the server's own close.
        for sock in socks:
            while sock.recv(65536):
                pass
            sock.close()


# --- the bridge's side --------------------------------------------------------------------


def connections() -> int:
    """Hypercorn connections still running (each is one task of its asyncio worker)."""
    return sum(
        1
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").endswith("_server_callback")
    )


def open_streams(b: RunningBridge, name: str = "bridge_open_streams") -> float:
    return b.bridge.metrics.registry.get_sample_value(name) or 0.0


@contextmanager
def collector_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def saved_garbage() -> list[Any]:
    """Collect everything; what died in cycles is kept (DEBUG_SAVEALL) and returned."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    return found
