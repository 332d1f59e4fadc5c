"""Design probes: Hypercorn with a raw ASGI app that fans a frame out once per channel.

Not the bridge, and not part of the default run: two prototypes of how the bridge could
serve its stream route, measured with the same client as everything else, so that the
gain of each lever is known before the bridge is changed.

    GET  /sub/{channel}   an SSE response kept open by the ASGI app (no Quart)
    POST /pub/{channel}   the frame is encoded once and sent to every viewer in one loop

``--mode send``: the loop is ``await send(body event)`` per viewer through Hypercorn's
ASGI send path (h11 framing, the connection's send lock, drain): no task wakes per
viewer, but every frame still goes through Hypercorn and h11.
``--mode transport``: the loop writes the pre-chunked frame straight to each viewer's
asyncio transport (found through Hypercorn's internals after the response started), as
the floor does; h11 still frames the headers and the end of the response.

    python -m bench.harness.asgi_fanout --port 18600 --mode send|transport [--core 0]
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from bench.harness import cli
from bench.harness.common import pin, raise_nofile

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
MAX_UNSENT = 1024 * 1024


def transport_of(send: Send) -> asyncio.Transport | None:
    """The viewer's transport behind Hypercorn's ``send`` (HTTPStream -> H11Protocol ->
    TCPServer -> StreamWriter), or None where the internals are not what they were."""
    try:
        stream = send.__self__  # type: ignore[attr-defined]
        protocol = stream.send.__self__
        server = protocol.send.__self__
        transport = server.writer.transport
    except AttributeError:
        return None
    return transport if isinstance(transport, asyncio.Transport) else None


class Viewer:
    __slots__ = ("send", "transport")

    def __init__(self, send: Send, transport: asyncio.Transport | None) -> None:
        self.send = send
        self.transport = transport


class App:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.channels: dict[str, set[Viewer]] = {}
        self.seq = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if scope["method"] == "GET" and path.startswith("/sub/"):
            await self.subscribe(path[len("/sub/") :], receive, send)
        elif scope["method"] == "POST" and path.startswith("/pub/"):
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            count = await self.publish(path[len("/pub/") :], body)
            await self.respond(send, 200, json.dumps({"subscribers": count}).encode())
        elif path == "/healthz":
            await self.respond(send, 200, b'{"status":"ok"}')
        else:
            await self.respond(send, 404, b'{"error":"not_found"}')

    async def respond(self, send: Send, status: int, body: bytes) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def subscribe(self, channel: str, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": b"retry: 3000\n\n", "more_body": True})
        viewer = Viewer(send, transport_of(send) if self.mode == "transport" else None)
        viewers = self.channels.setdefault(channel, set())
        viewers.add(viewer)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            viewers.discard(viewer)
            if not viewers:
                self.channels.pop(channel, None)

    async def publish(self, channel: str, body: bytes) -> int:
        self.seq += 1
        frame = b"event: progress\nid: %d\ndata: %s\n\n" % (self.seq, body)
        viewers = list(self.channels.get(channel, ()))
        if self.mode == "transport":
            chunk = b"%x\r\n%s\r\n" % (len(frame), frame)
            for viewer in viewers:
                transport = viewer.transport
                if transport is None or transport.is_closing():
                    continue
                if transport.get_write_buffer_size() > MAX_UNSENT:
                    transport.abort()
                else:
                    transport.write(chunk)
        else:
            event = {"type": "http.response.body", "body": frame, "more_body": True}
            for viewer in viewers:
                await viewer.send(event)
        return len(viewers)


async def main_async(port: int, mode: str) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.backlog = 4096
    config.accesslog = None
    config.keep_alive_timeout = 3600
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def trigger() -> None:
        await stop.wait()

    await serve(App(mode), config, shutdown_trigger=trigger)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("", __doc__, "python -m bench.harness.asgi_fanout")
    cli.add_server(parser)
    parser.add_argument("--mode", choices=("send", "transport"), required=True)
    args = parser.parse_args(argv)
    pin(args.core)
    raise_nofile()
    asyncio.run(main_async(args.port, args.mode))


if __name__ == "__main__":
    main()
