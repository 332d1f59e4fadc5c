"""The Python floor: a plain asyncio write loop, no framework, no task per viewer.

    GET  /sub/{channel}   SSE headers and a retry line, then the channel's frames
    POST /pub/{channel}   the body becomes one ``progress`` frame, written to every
                          subscriber in one loop; answers {"subscribers": n}

One ``asyncio.Protocol`` per connection; a publish is ``transport.write(frame)`` for
each subscriber, the frame encoded once. A subscriber whose unsent bytes pass 1 MiB is
dropped (the bench never lets that happen; the bound keeps every buffer finite).

    python -m bench.harness.floor --port 18200 [--core 0]
"""

from __future__ import annotations

import asyncio
import json
import signal

from bench.harness import cli
from bench.harness.common import pin, raise_nofile

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_UNSENT = 1024 * 1024

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"retry: 3000\n\n"
)


class Floor:
    def __init__(self) -> None:
        self.channels: dict[str, set[asyncio.Transport]] = {}
        self.seq = 0

    def publish(self, channel: str, body: bytes) -> int:
        self.seq += 1
        frame = b"event: progress\nid: %d\ndata: %s\n\n" % (self.seq, body)
        subscribers = self.channels.get(channel, ())
        for transport in subscribers:
            if transport.get_write_buffer_size() > MAX_UNSENT:
                transport.abort()
            else:
                transport.write(frame)
        return len(subscribers)


class Connection(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.channel: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel is not None and self.transport is not None:
            subscribers = self.floor.channels.get(self.channel)
            if subscribers is not None:
                subscribers.discard(self.transport)
                if not subscribers:
                    del self.floor.channels[self.channel]

    def data_received(self, data: bytes) -> None:
        if self.channel is not None or self.transport is None:
            return  # a subscriber has nothing more to say
        self.buffer += data
        while self.buffer:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.abort()
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = [*lines[0].split(" "), "", "", ""][:3]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length > MAX_BODY:
                self.transport.abort()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(method, path, body)
            if self.channel is not None:
                return

    def handle(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        if method == "GET" and path.startswith("/sub/"):
            self.channel = path[len("/sub/") :]
            self.transport.write(SSE_HEAD)
            self.floor.channels.setdefault(self.channel, set()).add(self.transport)
        elif method == "POST" and path.startswith("/pub/"):
            count = self.floor.publish(path[len("/pub/") :], body)
            self.respond(200, json.dumps({"subscribers": count}).encode())
        elif method == "GET" and path == "/healthz":
            self.respond(200, b'{"status":"ok"}')
        else:
            self.respond(404, b'{"error":"not_found"}')

    def respond(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        reason = b"OK" if status == 200 else b"Not Found"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason, len(body), body)
        )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    floor = Floor()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: Connection(floor), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("", __doc__, "python -m bench.harness.floor")
    cli.add_server(parser)
    args = parser.parse_args(argv)
    pin(args.core)
    raise_nofile()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
