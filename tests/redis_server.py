"""A real redis-server for the tests that need one (cluster mode), on a loopback port."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """redis-server on a loopback port, without persistence, in its own directory."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if binary is None:
            pytest.fail(
                "redis-server is not installed, and the cluster tests need a real one: "
                "run scripts/install (or apt-get install redis-server)",
                pytrace=False,
            )
        self.binary = binary
        self.workdir = workdir
        self.port = port or _free_port()
        self.extra_args: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--loglevel", "warning",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64)[:1] in (b"+", b"-")  # PONG, or NOAUTH: it is up
        except OSError:
            return False

    def start(self) -> None:
        self.spawn()
        deadline = time.monotonic() + 10
        while not self.answers():
            assert self.process is not None and self.process.poll() is None, "redis died"
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    async def astart(self) -> None:
        self.spawn()
        async with asyncio.timeout(10):
            while not await asyncio.to_thread(self.answers):
                await asyncio.sleep(0.01)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
