"""The viewer's socket for the fast path: the one place that knows Hypercorn's internals.

Hack H1 (docs/hacks.md), fenced here so it can be found and retired:

What. ASGI gives an app a ``send`` callable, never the socket. The fast path
(bridge/streams/direct.py) needs the socket, so this module walks from Hypercorn's ``send`` to it
through four private attributes of three Hypercorn classes (asyncio worker, HTTP/1.1):

    send                  is the bound method ``HTTPStream.app_send``  (protocol/http_stream.py)
    HTTPStream.send       is the bound method ``H11Protocol.stream_send``   (protocol/h11.py)
    H11Protocol.send      is the bound method ``TCPServer.protocol_send``   (asyncio/tcp_server.py)
    TCPServer.writer      is the connection's ``asyncio.StreamWriter``; its ``transport`` is
                          the socket's ``asyncio.WriteTransport``

It also relies on what h11 and Hypercorn do around those writes: for an HTTP/1.1 GET
whose response has no Content-Length, h11 frames the body chunked, so frames written as
chunks (``sse.chunk``) between the response head and h11's closing chunk are valid; and
``TCPServer.protocol_send`` writes to that same transport, so the order holds. Over HTTPS
that transport is asyncio's SSL transport, which encrypts each write in order, so the same
holds (HTTP/1.1 over TLS keeps the fast path; tests/test_tls.py serves it). That
framing holds only for an HTTP/1.1 GET, so the transport is given out only for one (HTTP/1.0
gets a close-delimited body, in which chunk-size lines would show up as stream content; a HEAD
response has no body at all; HTTP/2 and HTTP/3 have no such transport), only on a
Hypercorn inside ``TESTED_HYPERCORN``, and only when every step of the walk finds what it
expects. Tested against Hypercorn 0.18.0 (tests/test_fast_path.py serves a real process);
0.17.0 to 0.17.3 have the same four attributes (read in their source, not run).

Why. Through ASGI, each frame to each viewer costs a task wake-up, Quart's response loop,
Hypercorn's send path and h11 framing: about 3.5x the CPU of a write to the transport
per frame at 10,000 viewers (bench/FINDINGS.md, "Where the time goes per frame").

Otherwise. ``fast_path_transport`` returns None and the stream takes the ASGI path
(bridge/streams/stream.py): the same events, pings and timeout, slower. Each such stream is
counted under its reason (``bridge_fast_path_fallbacks_total``); an untested Hypercorn or
a failed walk is also logged once per process as a WARNING, because then every stream
falls back (HTTP/1.0, HEAD and HTTP/2 fall back by design and are not logged).

What retires it: a public way to write pre-framed bytes to a response without the
per-frame ASGI round trip (an ASGI extension in Hypercorn, or a server that offers one),
or the bridge serving the stream route from its own ``asyncio.Protocol`` (proposal 1(b)
in bench/FINDINGS.md). Until then, a Hypercorn upgrade means: read the four attributes
above in the new release, run tests/test_fast_path.py on it, then widen
``TESTED_HYPERCORN`` and the pin in pyproject.toml together.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Final

from bridge.ops.metrics import FallbackReason

log = logging.getLogger("bridge.server.hypercorn_transport")

#: Hypercorn releases whose internals the walk was checked against: [lowest, end).
TESTED_HYPERCORN: Final = ((0, 17), (0, 19))


def fast_path_transport(
    scope: Mapping[str, Any], send: object, fell_back: Callable[[FallbackReason], None]
) -> asyncio.WriteTransport | None:
    """The viewer's transport if this request may take the fast path, else None.

    ``scope`` and ``send`` are the request's, as Hypercorn gave them to the app; ``fell_back``
    is told the reason whenever None is returned for a live connection. bridge/server/serve.py
    hands this function to the stream front (bridge/web/front.py), which calls it with them.
    """
    if scope.get("http_version") != "1.1":
        fell_back("http_version")
        return None
    if scope.get("method") != "GET":
        fell_back("method")
        return None
    untested = untested_hypercorn()
    if untested is not None:
        _warn_once("hypercorn_version", untested)
        fell_back("hypercorn_version")
        return None
    try:
        transport = _walk(send)
    except _Moved as moved:
        _warn_once("internals", f"{moved} (Hypercorn {installed_hypercorn()})")
        fell_back("internals")
        return None
    if transport.is_closing():
        # The viewer is already gone; the ASGI path notices and ends its stream.
        return None
    return transport


class _Moved(Exception):
    """A step of the walk did not find what Hypercorn 0.17-0.18 have there."""


def _walk(send: object) -> asyncio.WriteTransport:
    stream = _bound_to(send, "HTTPStream", "send")
    protocol = _bound_to(getattr(stream, "send", None), "H11Protocol", "HTTPStream.send")
    server = _bound_to(getattr(protocol, "send", None), "TCPServer", "H11Protocol.send")
    writer = getattr(server, "writer", None)
    transport = getattr(writer, "transport", None)
    if not isinstance(transport, asyncio.WriteTransport):
        raise _Moved(f"TCPServer.writer.transport is {type(transport).__name__}")
    return transport


def _bound_to(method: object, owner: str, what: str) -> object:
    """The object ``method`` is bound to, which must be a Hypercorn ``owner``."""
    instance = getattr(method, "__self__", None)
    cls = type(instance)
    if cls.__name__ != owner or not cls.__module__.startswith("hypercorn."):
        raise _Moved(f"{what} is not a method of Hypercorn's {owner}")
    return instance


def installed_hypercorn() -> str | None:
    """The installed Hypercorn's version string, None if it is not installed."""
    try:
        return metadata.version("hypercorn")
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def untested_hypercorn() -> str | None:
    """Why the installed Hypercorn is not one the walk was checked against, else None.

    Cached: the installed version does not change while the process runs.
    """
    return outside(installed_hypercorn(), TESTED_HYPERCORN, "tested")


def outside(
    version: str | None, releases: tuple[tuple[int, ...], tuple[int, ...]], checked: str
) -> str | None:
    """Why Hypercorn ``version`` is not in ``releases`` ([lowest, end)), else None."""
    lowest, end = releases
    release = _release(version) if version is not None else None
    if release is None or not lowest <= release < end:
        span = f">={_dotted(lowest)},<{_dotted(end)}"
        return f"Hypercorn {version} is outside the {checked} range {span}"
    return None


def _release(version: str) -> tuple[int, ...] | None:
    """The leading release numbers of ``version`` ("0.18.0rc1" -> (0, 18, 0))."""
    # Only the release segment matters: a pre-release of an untested version (0.19.0rc1)
    # compares as that version, so it is untested too.
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        return None
    return tuple(int(part) for part in match.group().split("."))


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


_warned: set[FallbackReason] = set()


def _warn_once(reason: FallbackReason, why: str) -> None:
    # Once per process: when this happens it happens to every stream, and one line says it.
    if reason in _warned:
        return
    _warned.add(reason)
    log.warning(
        "fast path off (%s): %s; streams take the ASGI path, same events, slower "
        "(counted in bridge_fast_path_fallbacks_total, see docs/fast-path.md)",
        reason,
        why,
    )
