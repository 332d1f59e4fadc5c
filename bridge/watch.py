"""``sse-bridge watch RUN_ID``: follow one run from the terminal.

A progress bar (rich) with the run's state and its running node(s) when stdout is a
terminal; one line per change when it is not (CI logs); one JSON object per event with
``--json``. When the connection drops it reconnects with ``Last-Event-ID``, so no event
is missed or shown twice.

Exit codes: 0 the run completed (``complete``), 1 it failed (``error``), 2 the stream
timed out (``timeout``), the bridge refused the stream (its JSON ``message`` goes to
stderr), or the bridge stayed unreachable for ``--reconnect-for`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bridge import run_id as run_ids
from bridge.errors import InvalidRunId
from bridge.eventstream import EventStreamParser, ParsedEvent

EXIT_COMPLETE = 0
EXIT_ERROR = 1
EXIT_OTHER = 2

DEFAULT_URL = "http://127.0.0.1:8080"
#: Environment: the bridge's URL, a bearer token, extra headers ("Name: value" per line).
ENV_URL = "SSE_BRIDGE_URL"
ENV_TOKEN = "SSE_BRIDGE_TOKEN"
ENV_HEADERS = "SSE_BRIDGE_HEADERS"


class Refused(Exception):
    """The stream will not open: print the message, exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to follow")
    parser.add_argument(
        "--url",
        default=None,
        help=f"the bridge's base URL (default ${ENV_URL} or {DEFAULT_URL})",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help=f"send this header (repeatable), e.g. credentials; see also ${ENV_TOKEN}, "
        f"${ENV_HEADERS}",
    )
    parser.add_argument(
        "--json", action="store_true", help="print each event as one JSON line instead of a bar"
    )
    parser.add_argument(
        "--reconnect-for",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up (exit 2) when the bridge stays unreachable this long (default 120)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="reconnect when nothing, not even a ping, arrives this long (default 60)",
    )


def headers_from(given: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Headers from $SSE_BRIDGE_TOKEN, $SSE_BRIDGE_HEADERS, then --header (last wins)."""
    headers: dict[str, str] = {}
    token = environ.get(ENV_TOKEN, "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    lines = [line for line in environ.get(ENV_HEADERS, "").splitlines() if line.strip()]
    for line in [*lines, *given]:
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name or any(c in line for c in "\r\n\0"):
            raise Refused(f"a header must look like 'Name: value', got {name or line!r}")
        headers[name] = value
    return headers


# --- output --------------------------------------------------------------------------


def percent(status: Mapping[str, Any]) -> float:
    value = status.get("progress")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    pct = value * 100 if value <= 1 else value
    return float(max(0.0, min(100.0, pct)))


def running_nodes(status: Mapping[str, Any]) -> str:
    current = status.get("currentNode")
    if isinstance(current, str) and current:
        return current
    nodes = status.get("nodes")
    if isinstance(nodes, list):
        names = [
            str(n.get("id")) for n in nodes if isinstance(n, dict) and n.get("status") == "running"
        ]
        return ", ".join(names)
    return ""


class Display:
    """Where events go: a rich bar, plain lines, or JSON lines."""

    def __init__(self, run_id: str, mode: str, out: TextIO, err: TextIO) -> None:
        self.run_id = run_id
        self.mode = mode
        self.out = out
        self.err = err
        self.console = Console(file=out, highlight=False)
        self.err_console = Console(file=err, highlight=False)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = ""

    def __enter__(self) -> Display:
        if self.mode == "bar":
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[run]}"),
                TextColumn("{task.fields[state]:<12}"),
                BarColumn(bar_width=None),
                TaskProgressColumn(),
                TextColumn("[cyan]{task.fields[node]}"),
                TimeElapsedColumn(),
                console=self.console,
                expand=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "run", total=100, run=self.run_id, state="connecting", node=""
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def event(self, event: ParsedEvent, data: Any) -> None:
        if self.mode == "json":
            record = {"event": event.event, "id": event.id if event.has_id else None, "data": data}
            self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.out.flush()
            return
        if not isinstance(data, dict):
            return
        state = str(data.get("status", event.event))
        node = running_nodes(data)
        pct = percent(data)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=pct, state=state, node=node)
        else:
            line = f"{self.run_id} {state:<10} {pct:5.1f}%  {node}".rstrip()
            if line != self._last_line:
                self._last_line = line
                self.console.print(line, markup=False)

    def state(self, text: str) -> None:
        """A change of the connection, not of the run (reconnecting, ...)."""
        if self._progress is not None and self._task is not None:
            # Above the live bar, on the same terminal, so the two never garble each other.
            self._progress.console.print(f"sse-bridge watch: {text}", markup=False, style="dim")
            return
        self.err_console.print(f"sse-bridge watch: {text}", markup=False, style="dim")

    def finish(self, event: str, data: Any) -> None:
        if self.mode == "json":
            return
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        body = data if isinstance(data, dict) else {}
        if event == "complete":
            self.console.print(f"[green]✔[/] {self.run_id} {body.get('status', 'completed')}")
            outputs = body.get("outputs")
            if outputs:
                self.console.print_json(json.dumps(outputs))
        elif event == "error":
            message = body.get("errorMessage") or "the run failed"
            self.err_console.print(
                f"[red]✘[/] {self.run_id} {body.get('status', 'failed')}: {message}",
                highlight=False,
            )
        elif event == "timeout":
            message = body.get("message") or "the stream timed out"
            self.err_console.print(f"[yellow]⏱[/] {self.run_id}: {message}")


# --- following the stream ------------------------------------------------------------


@dataclass
class Watch:
    run_id: str
    base_url: str
    headers: dict[str, str]
    display: Display
    reconnect_for: float = 120.0
    idle_timeout: float = 60.0
    last_id: str = ""
    retry_ms: int = 3000
    #: Seconds to wait before the next attempt (set by a 503's Retry-After).
    retry_after: float | None = None
    failures: int = 0
    saw_204: bool = False
    #: True once the current attempt got an event stream.
    connected: bool = False
    _unreachable_since: float | None = field(default=None, repr=False)

    @property
    def stream_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/runs/{quote(self.run_id, safe='')}/stream"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.idle_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self.connected = False
                why = "no event stream"
                try:
                    code = await self.follow(session)
                except Refused as refusal:
                    self.display.err.write(f"sse-bridge watch: {refusal}\n")
                    self.display.err.flush()
                    return EXIT_OTHER
                except (aiohttp.ClientError, TimeoutError) as error:
                    code = None
                    self.failures += 1
                    why = type(error).__name__
                if code is not None:
                    return code
                # Unreachable, or answering 503, for too long: give up.
                now = loop.time()
                if self.connected:
                    self._unreachable_since = None
                elif self._unreachable_since is None:
                    self._unreachable_since = now
                elif now - self._unreachable_since >= self.reconnect_for:
                    self.display.err.write(
                        f"sse-bridge watch: no stream from the bridge at {self.base_url} "
                        f"for {self.reconnect_for:g} s ({why})\n"
                    )
                    return EXIT_OTHER
                delay = self.next_delay()
                self.display.state(f"reconnecting in {delay:.1f} s")
                await asyncio.sleep(delay)

    def next_delay(self) -> float:
        if self.retry_after is not None:
            delay, self.retry_after = self.retry_after, None
            return delay
        base = self.retry_ms / 1000 * 2 ** min(max(self.failures - 1, 0), 4)
        return float(min(base, 30.0) * random.uniform(1.0, 1.2))

    async def follow(self, session: aiohttp.ClientSession) -> int | None:
        """One connection: an exit code when the run is over, None to reconnect."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self.headers}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        async with session.get(self.stream_url, headers=headers) as response:
            if response.status == 204:
                # The bridge thinks we have the final event; ask for the current state.
                if self.saw_204 or not self.last_id:
                    raise Refused("the bridge has nothing to stream for this run (HTTP 204)")
                self.saw_204, self.last_id = True, ""
                self.failures = 0
                self.connected = True
                return None
            if response.status == 503:
                self.failures += 1
                self.retry_after = _retry_after(response.headers.get("Retry-After"))
                self.display.state(await _message(response))
                return None
            if response.status != 200:
                raise Refused(await _message(response))
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise Refused(f"{self.stream_url} is not an event stream")
            if self.failures:
                self.display.state("connected")
            self.failures = 0
            self.connected = True
            parser = EventStreamParser()
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    code = self.handle(event)
                    if code is not None:
                        return code
                if parser.retry is not None:
                    self.retry_ms = parser.retry
        self.failures += 1
        return None

    def handle(self, event: ParsedEvent) -> int | None:
        if event.event == "ping":
            return None
        try:
            data = json.loads(event.data)
        except ValueError:
            data = event.data
        if event.has_id:
            self.last_id = event.id
            self.saw_204 = False
        self.display.event(event, data)
        if event.event in ("complete", "error", "timeout"):
            self.display.finish(event.event, data)
            return {"complete": EXIT_COMPLETE, "error": EXIT_ERROR}.get(event.event, EXIT_OTHER)
        return None


def _retry_after(value: str | None) -> float:
    try:
        return max(0.5, min(float(value or 1), 60.0))
    except ValueError:
        return 1.0


async def _message(response: aiohttp.ClientResponse) -> str:
    """The bridge's sentence from its JSON error body, with the status."""
    text = await response.text(errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        code = body.get("error", "")
        return f"{body['message']} (HTTP {response.status} {code})".replace(" )", ")")
    return f"the bridge answered HTTP {response.status}"


def main(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    out, err = sys.stdout, sys.stderr
    try:
        run_ids.validate(args.run_id)
    except InvalidRunId as error:
        err.write(f"sse-bridge watch: {error.message}\n")
        return EXIT_OTHER
    try:
        headers = headers_from(args.header, environ)
    except Refused as error:
        err.write(f"sse-bridge watch: {error}\n")
        return EXIT_OTHER
    url = args.url or environ.get(ENV_URL) or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        err.write(f"sse-bridge watch: --url must start with http:// or https://, got {url!r}\n")
        return EXIT_OTHER
    mode = "json" if args.json else "bar" if Console(file=out).is_terminal else "lines"
    with Display(args.run_id, mode, out, err) as display:
        watch = Watch(
            args.run_id,
            url,
            headers,
            display,
            reconnect_for=args.reconnect_for,
            idle_timeout=args.idle_timeout,
        )
        try:
            return asyncio.run(watch.run())
        except KeyboardInterrupt:
            return 130
