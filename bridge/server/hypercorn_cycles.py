"""Free a closed connection's objects by reference counting: break Hypercorn's cycles.

Hack H2 (docs/hacks.md), fenced here so it can be found and retired:

What. When a connection's ``TCPServer.run()`` has returned (its task group has waited
for every task of the connection, and the socket is closed), three links that close
reference cycles are cut, so that everything the connection held (Hypercorn's
per-connection objects, the asyncio streams, transport and socket, the request's task,
scope and whatever the app left in it) is freed at once by reference counting, instead
of waiting, as cyclic garbage, for a collection of the generation it sits in:

1. Hypercorn's send callbacks point back up the object tree. ``TCPServer`` holds its
   ``ProtocolWrapper`` (``.protocol``), which holds the ``H11Protocol``/``H2Protocol``
   (``.protocol``); both hold the bound method ``TCPServer.protocol_send`` as ``.send``
   (asyncio/tcp_server.py, protocol/__init__.py, protocol/h11.py, protocol/h2.py). Each
   ``send`` that is still a method of this ``TCPServer`` is replaced by ``_gone``, a
   coroutine function that drops what it is given: the connection is over, there is
   nothing left to write to (a stray call, e.g. from ``TCPServer._initiate_server_close``
   running on under ``asyncio.shield`` after its timer was cancelled, then does nothing
   instead of writing to a closed transport).
2. A reset connection's error keeps its frames: ``StreamReader.exception()`` is the
   ``ConnectionResetError`` the read raised, whose ``__traceback__`` holds the frames it
   passed through (``TCPServer._read_data``, ``StreamReader.read``, the transport's read
   callback), whose locals hold the reader, transport and ``TCPServer`` that hold the
   error. The traceback is dropped (from it and from the errors it was raised from): the
   connection is over and Hypercorn has already handled (swallowed) the error.
3. asyncio's ``_SelectorSocketTransport`` keeps its own read callback as a bound method
   (``._read_ready_cb``: a cycle through every plain-TCP transport on CPython 3.11; 3.12
   clears it in ``close()``, python/cpython#100348). Once the transport has lost its
   connection (``_sock`` is None: asyncio will not read again) it is set to None.

How it hooks in: ``install()`` (called by bridge/server/serve.py before Hypercorn serves)
wraps ``hypercorn.asyncio.tcp_server.TCPServer.run``, the coroutine Hypercorn's asyncio
worker awaits for each accepted connection, in one that awaits it and then, in a
``finally``, cuts the links above. The class stays Hypercorn's own (the fast path's walk
in bridge/server/hypercorn_transport.py checks it by name and module). It touches
nothing while a connection is in use, and nothing it does can raise into Hypercorn: a
failure is logged once and counted (``stats``), and what is left uncut of that
connection is freed by the collector. HTTP/2 connections get the same cut
(``H2Protocol.send``); bench/studies/cycles.py measures HTTP/1.1 only.

Checked against Hypercorn 0.17.0 to 0.18.0 (the same attributes in 0.17.0, 0.17.3 and
0.18.0, read in their source; run with 0.18.0 by tests/test_cycles.py and
bench/studies/cycles.py, which measure before and after: bench/results/cycles.md). Outside
``CHECKED_HYPERCORN``, or when a class is not where it was, ``install()`` does nothing,
logs one WARNING and returns False: the connections are then freed by the collector, as
without it (bridge/ops/gc_tuning.py's full collections), which is slower, never wrong.

Not covered: what the app itself holds or builds through the request. The app puts
nothing of Hypercorn's into the scope (the stream front is handed ``send``), and its own
workarounds stand where they are needed, each tagged with its number in docs/hacks.md:
H3 (no final body once the viewer left, bridge/web/front.py), H4 (a cancelled pump's
ticker entry, bridge/web/front.py), H5 (the fast-path hand-over's replay lists,
bridge/streams/stream.py).

What retires it: Hypercorn breaking these cycles itself when a connection ends (e.g.
clearing ``ProtocolWrapper.send``/``H11Protocol.send`` in ``TCPServer._close``, or
passing the send callback without binding it to the server), and CPython >= 3.12 for
the transport. Until then, a Hypercorn upgrade means: read the attributes above in the
new release, run tests/test_cycles.py and bench/studies/cycles.py on it, then widen
``CHECKED_HYPERCORN``.
"""

from __future__ import annotations

import inspect
import logging
import types
from dataclasses import dataclass
from typing import Any, Final

from bridge.server.hypercorn_transport import installed_hypercorn, outside

log = logging.getLogger("bridge.server.hypercorn_cycles")

#: Hypercorn releases whose connection objects were checked: [lowest, end).
CHECKED_HYPERCORN: Final = ((0, 17), (0, 19))
#: How far along ``__context__``/``__cause__`` a reset's tracebacks are dropped.
_CHAINED: Final = 8


@dataclass
class Stats:
    """What the hook did in this process (for tests and a curious operator)."""

    #: Connections whose cycles were cut after they ended.
    released: int = 0
    #: Connections the hook could not release (it logged why, once).
    failed: int = 0
    #: Why ``install()`` left Hypercorn alone, if it did.
    off: str | None = None


stats = Stats()
_original: Any = None
_warned = False


async def _gone(_event: object) -> None:
    """The send of a connection that is over: nothing is left to send to."""


def _unchecked() -> str | None:
    """Why the installed Hypercorn is not one this was checked against, else None."""
    return outside(installed_hypercorn(), CHECKED_HYPERCORN, "checked")


def install() -> bool:
    """Make every connection Hypercorn's asyncio worker accepts from now on cut its cycles
    when it ends. Idempotent; False (and one WARNING) where it does not apply."""
    global _original
    if _original is not None:
        return True
    why = _unchecked()
    if why is None:
        try:
            from hypercorn.asyncio import run as worker
            from hypercorn.asyncio.tcp_server import TCPServer
        except ImportError as error:  # pragma: no cover - a checked release has both
            why = f"cannot import Hypercorn's asyncio worker ({error})"
        else:
            # The worker must build this class for each connection, and run() be a coroutine.
            if getattr(worker, "TCPServer", None) is not TCPServer or not (
                inspect.iscoroutinefunction(getattr(TCPServer, "run", None))
            ):
                why = "hypercorn.asyncio.run.TCPServer.run is not what it was"
    if why is not None:
        stats.off = why
        _warn_once(f"cycles of closed connections are left to the collector: {why}")
        return False

    hypercorn_run = TCPServer.run

    async def run(self: Any) -> None:
        try:
            await hypercorn_run(self)
        finally:
            release(self)

    run.__qualname__ = f"{TCPServer.__qualname__}.run"
    run.__doc__ = (
        "Hypercorn's TCPServer.run, then its cycles cut (bridge/server/hypercorn_cycles.py)."
    )
    _original = hypercorn_run
    TCPServer.run = run  # type: ignore[method-assign]
    stats.off = None
    return True


def uninstall() -> None:
    """Give Hypercorn its own TCPServer.run back (for the bench's "before" measurement)."""
    global _original
    if _original is None:
        return
    from hypercorn.asyncio.tcp_server import TCPServer

    TCPServer.run = _original  # type: ignore[method-assign]
    _original = None


def release(server: object) -> None:
    """Cut the cycles of a connection whose ``TCPServer.run()`` has returned; never raises."""
    try:
        _cut_sends(server)
        reader = getattr(server, "reader", None)
        if reader is not None:
            _drop_tracebacks(reader.exception())
        writer = getattr(server, "writer", None)
        _cut_read_callback(getattr(writer, "transport", None))
    except Exception as error:
        stats.failed += 1
        _warn_once(f"could not release a closed connection: {type(error).__name__}: {error}")
    else:
        stats.released += 1


def _cut_sends(server: object) -> None:
    wrapper = vars(server).get("protocol")  # unset if the connection failed at its start
    for holder in (wrapper, getattr(wrapper, "protocol", None)):
        send = getattr(holder, "send", None)
        # Only a bound method of this very server: anything else is not the known cycle.
        if getattr(send, "__self__", None) is server:
            holder.send = _gone  # type: ignore[union-attr]


def _drop_tracebacks(error: BaseException | None) -> None:
    for _ in range(_CHAINED):
        if error is None:
            return
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def _cut_read_callback(transport: object) -> None:
    if getattr(transport, "_sock", True) is not None:
        return  # not lost yet (or not a selector transport): asyncio may still read
    callback = getattr(transport, "_read_ready_cb", None)
    if not isinstance(callback, types.MethodType) or callback.__self__ is not transport:
        return  # not the transport's own read callback: not the known cycle
    owner: Any = callback.__self__
    owner._read_ready_cb = None


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("%s (see bridge/server/hypercorn_cycles.py)", message)
