"""The little ASGI the stream front (bridge/web/front.py) speaks: types, answers, the wait.

Plain ASGI 3 (the standard interface Hypercorn serves): nothing here knows Hypercorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

from bridge.web.reply import Headers, Reply

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
#: An ASGI app as servers and frameworks type it (each its own way): the three arguments.
App: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]

#: The last body message of every answer (h11 writes the closing chunk on it).
END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


def encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def start(send: Send, status: int, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": encode(headers)})


async def body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def send_reply(send: Send, reply: Reply, extra: Headers = ()) -> None:
    """A whole answer with a known length (``extra``: headers added, e.g. CORS)."""
    headers = reply.headers + extra
    if reply.status not in (204, 304):
        headers += (("Content-Length", str(len(reply.body))),)
    await start(send, reply.status, headers)
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


async def disconnected_before(done: asyncio.Future[Any], receive: Receive) -> bool:
    """Wait, in this task, until the client leaves (True) or ``done`` resolves (False).

    ASGI tells an app that its client left only through ``receive()``, and a fast-path
    stream ends when its sink's future resolves: waiting for both would take a second
    task per viewer. Instead this task waits on ``receive()`` and ``done`` cuts that wait
    short through ``asyncio.Timeout.reschedule``, the public way to end a wait of the
    current task early (a cancellation asyncio itself tells apart from any other).
    """
    if done.done():
        return False
    waiting = True
    try:
        async with asyncio.timeout(None) as cut:

            def on_done(_: asyncio.Future[Any]) -> None:
                # Run by the loop: the block may have been left since ``done`` resolved.
                if waiting:
                    cut.reschedule(asyncio.get_running_loop().time())

            done.add_done_callback(on_done)
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass  # a GET's body does not matter: only the disconnect does
                return True
            finally:
                waiting = False
                done.remove_done_callback(on_done)
    except TimeoutError:
        return False
