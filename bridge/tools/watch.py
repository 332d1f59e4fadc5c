"""``sse-bridge watch RUN_ID``: follow one run from the terminal.

A progress bar (rich) with the run's state and its running node(s) when stdout is a
terminal; one line per change when it is not (CI logs); one JSON object per event with
``--json``. When the connection drops it reconnects with ``Last-Event-ID``, so no event
is missed or shown twice.

It follows ``GET /v1/streams?runs=RUN_ID`` rather than the single-run stream: the same
shared poller and resume, but each event also carries the state and progress the
bridge's status filters read, so the bar is right for any configured API (a real bar
when the progress is known, a pulsing one when it is not).

Without a run id it follows ``GET /v1/events``, every run the bridge's upstream lists
(BRIDGE_UPSTREAM_LIST_PATH): one line per change of any run, ``--json`` one object per
event, until interrupted; a ``timeout`` reconnects and resumes.

A transient refusal (the upstream unreachable or slow, the bridge full or draining) comes
as the bridge answers it to EventSource: 200, a ``retry:`` line, a comment naming the
error, the close. That is no connection: the comment's reason is shown
(``upstream unavailable: the upstream API could not be reached; reconnecting in 3.4 s``)
and the attempt counts as failed for ``--reconnect-for``.

Exit codes: 0 the run completed (``complete``), 1 it failed (``error``), 2 the stream
timed out (``timeout``), the bridge refused the stream (its JSON ``message`` goes to
stderr), or the bridge stayed unreachable, or refusing, for ``--reconnect-for`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote, unquote

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from bridge import run_id as run_ids
from bridge.errors import InvalidRunId
from bridge.tools.eventstream import EventStreamParser, ParsedEvent
from bridge.tools.headers import HeaderError, parse_headers

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
    parser.add_argument(
        "run_id",
        metavar="RUN_ID",
        nargs="?",
        default=None,
        help="the run to follow; without one, every run the upstream lists (GET /v1/events)",
    )
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
        "--wait-result",
        action="store_true",
        help="no progress: wait for the run to end (long-polling GET /v1/runs/ID/result), "
        "print its final status as JSON; exit 0 complete, 1 error, 2 refused",
    )
    parser.add_argument(
        "--reconnect-for",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up (exit 2) when the bridge stays unreachable, or keeps refusing with a "
        "passing error such as an unreachable upstream, this long (default 120)",
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
    try:
        headers.update(parse_headers(lines, f"${ENV_HEADERS} line"))
        headers.update(parse_headers(given, "--header"))
    except HeaderError as error:
        raise Refused(str(error)) from None
    return headers


# --- what one event says ---------------------------------------------------------------

#: Events that carry a run's status (the others: ping and timeout, for the connection).
RUN_EVENTS = ("progress", "complete", "error")


@dataclass(frozen=True, slots=True)
class Update:
    """One event of the run, whichever stream it came on."""

    event: str
    #: The run's own event id (the same on /v1/streams and the single-run stream).
    id: str | None
    #: The state as the bridge's status filters read it (None: none read).
    state: str | None
    #: 0 to 1, or None when the bridge knows no progress for this API.
    progress: float | None
    #: The status object as the upstream sent it (timeout: the bridge's message).
    data: Any
    #: An event of BRIDGE_EVENTS_FILE (not the status): printed as a line of its own.
    derived: bool = False
    #: One line the bridge read with BRIDGE_DETAIL_EXPR (a stage, an error message).
    detail: str | None = None


def _fraction(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(max(0.0, min(1.0, value)))


def message_of(status: Mapping[str, Any]) -> str:
    """A failure's reason, where the run APIs the bridge meets put it."""

    def nested(key: str, name: str) -> object:
        inner = status.get(key)
        return inner.get(name) if isinstance(inner, dict) else None

    for value in (
        status.get("errorMessage"),
        status.get("error_message"),
        status.get("message"),
        status.get("error"),
        nested("error", "message"),
        nested("status", "message"),
        nested("state", "state_message"),
    ):
        if isinstance(value, str) and value.strip():
            return value
    return ""


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


def state_text(update: Update) -> str:
    if update.state is not None:
        return update.state
    if update.event == "complete":
        return "completed"
    if update.event == "error":
        return "error"
    return "unknown"


# --- output --------------------------------------------------------------------------


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
                # Only a known progress gets a number; an unknown one is a pulsing bar.
                TextColumn("{task.fields[percent]:>4}"),
                TextColumn("[cyan]{task.fields[node]}"),
                TimeElapsedColumn(),
                console=self.console,
                expand=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "run", total=None, run=self.run_id, state="connecting", node="", percent=""
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def event(self, update: Update) -> None:
        if self.mode == "json":
            record: dict[str, Any] = {"event": update.event, "id": update.id}
            if update.event in RUN_EVENTS or update.derived:
                record |= {
                    "state": update.state,
                    "progress": update.progress,
                    "detail": update.detail,
                }
            record["data"] = update.data
            self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.out.flush()
            return
        if update.derived:
            # What happened, one line each (a log line, a step that finished, ...).
            text = json.dumps(update.data, separators=(",", ":"))
            line = f"{update.event}  {text[:MAX_DERIVED_LINE]}"
            console = self._progress.console if self._progress is not None else self.console
            console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        if not isinstance(update.data, dict):
            return
        state = state_text(update)
        # Seed 004's running nodes, else what BRIDGE_DETAIL_EXPR read.
        node = running_nodes(update.data) or update.detail or ""
        pct = update.progress * 100 if update.progress is not None else None
        if pct is None and update.event == "complete":
            pct = 100.0  # the run is done, whether or not the API counts its progress
        if self._progress is not None and self._task is not None:
            if pct is not None:
                self._progress.update(
                    self._task, total=100, completed=pct, percent=f"{pct:.0f}%", state=state
                )
            elif update.event == "error":
                # Over, at an unknown point: a still, empty bar rather than a pulse.
                self._progress.update(self._task, total=100, completed=0, percent="", state=state)
            else:
                self._progress.update(self._task, total=None, percent="", state=state)
            self._progress.update(self._task, node=node)
        else:
            shown = f"{pct:5.1f}%  " if pct is not None else ""
            line = f"{self.run_id} {state:<12} {shown}{node}".rstrip()
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

    def finish(self, update: Update) -> None:
        if self.mode == "json":
            return
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        body = update.data if isinstance(update.data, dict) else {}
        state = state_text(update)
        if update.event == "complete":
            self.console.print(f"[green]✔[/] {self.run_id} {escape(state)}")
            outputs = body.get("outputs")
            if outputs:
                self.console.print_json(json.dumps(outputs))
        elif update.event == "error":
            message = update.detail or message_of(body) or "the run failed"
            self.err_console.print(
                f"[red]✘[/] {self.run_id} {escape(state)}: {escape(message)}", highlight=False
            )
        elif update.event == "timeout":
            message = body.get("message") or "the stream timed out"
            self.err_console.print(f"[yellow]⏱[/] {self.run_id}: {escape(str(message))}")


# --- following the stream ------------------------------------------------------------


@dataclass
class Watch:
    run_id: str
    base_url: str
    headers: dict[str, str]
    display: Display
    reconnect_for: float = 120.0
    idle_timeout: float = 60.0
    #: The SSE id to resume from (the multi id of /v1/streams).
    last_id: str = ""
    retry_ms: int = 3000
    #: Seconds to wait before the next attempt (set by a 503's Retry-After).
    retry_after: float | None = None
    failures: int = 0
    saw_204: bool = False
    #: True once the current attempt got an event stream.
    connected: bool = False
    #: Why the last attempt gave no stream, as the bridge said it (None: not said).
    reason: str | None = None
    _unreachable_since: float | None = field(default=None, repr=False)

    @property
    def stream_url(self) -> str:
        base = self.base_url.rstrip("/")
        run = quote(self.run_id, safe="")
        return f"{base}/v1/streams?runs={run}"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.idle_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self.connected = False
                self.reason = None
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
                if self.reason is not None:
                    why = self.reason
                # Unreachable, answering 503, or refusing with a reason, for too long:
                # give up.
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
                said = f"{self.reason}; " if self.reason is not None else ""
                self.display.state(f"{said}reconnecting in {delay:.1f} s")
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
            parser = EventStreamParser()
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    if not self.connected:
                        # Connected once an event came: a transient refusal is a 200 too
                        # (retry:, a comment, the close), for EventSource's sake.
                        if self.failures:
                            self.display.state("connected")
                        self.failures = 0
                        self.connected = True
                    code = self.handle(event)
                    if code is not None:
                        return code
                if parser.retry is not None:
                    self.retry_ms = parser.retry
        if self.connected:
            # Closed without complete/error: the end events may be renamed or turned off
            # (BRIDGE_EVENTS_FILE), so ask whether the run ended.
            ended = await self.ended(session)
            if ended is not None:
                return ended
        self.failures += 1
        if not self.connected:
            self.reason = refusal_reason(parser.last_comment)
            if self.reason is not None and parser.retry is not None:
                # The bridge's own wait (Retry-After, in ms), as EventSource would take it.
                self.retry_after = max(0.5, min(parser.retry / 1000, 60.0))
        return None

    async def ended(self, session: aiohttp.ClientSession) -> int | None:
        """The exit code if the run has ended (GET /v1/runs/ID/result, no wait)."""
        base = self.base_url.rstrip("/")
        target = f"{base}/v1/runs/{quote(self.run_id, safe='')}/result"
        try:
            async with session.get(target, params={"wait": "0"}, headers=self.headers) as r:
                if r.status != 200:
                    return None
                body = await _json_body(r)
                kind = r.headers.get("X-Run-Event", "")
                state = unquote(r.headers.get("X-Run-State", "")) or None
        except (aiohttp.ClientError, TimeoutError):
            return None
        if kind not in ("complete", "error"):
            return None
        self.display.finish(Update(kind, None, state, None, body))
        return EXIT_COMPLETE if kind == "complete" else EXIT_ERROR

    def handle(self, event: ParsedEvent) -> int | None:
        if event.event == "ping":
            return None
        try:
            data = json.loads(event.data)
        except ValueError:
            data = event.data
        update = self.update(event, data)
        if update is None:
            return None
        if event.has_id:
            self.last_id = event.id
            self.saw_204 = False
        self.display.event(update)
        if event.event in ("complete", "error", "timeout"):
            self.display.finish(update)
            return {"complete": EXIT_COMPLETE, "error": EXIT_ERROR}.get(event.event, EXIT_OTHER)
        return None

    def update(self, event: ParsedEvent, data: Any) -> Update | None:
        """What ``event`` says about the run (None: nothing, e.g. another run's event)."""
        own_id = event.id if event.has_id else None
        if event.event not in RUN_EVENTS and event.event != "timeout":
            # A derived event (BRIDGE_EVENTS_FILE), or a built-in one renamed.
            if not isinstance(data, dict) or data.get("run_id") != self.run_id:
                return None
            run_event_id, state = data.get("id"), data.get("state")
            return Update(
                event.event,
                run_event_id if isinstance(run_event_id, str) else None,
                state if isinstance(state, str) else None,
                _fraction(data.get("progress")),
                data.get("data"),
                derived=True,
            )
        if event.event not in RUN_EVENTS:
            return Update(event.event, own_id, None, None, data)
        if not isinstance(data, dict) or data.get("run_id") != self.run_id:
            return None
        run_event_id = data.get("id")
        state = data.get("state")
        detail = data.get("detail")
        return Update(
            event.event,
            run_event_id if isinstance(run_event_id, str) else None,
            state if isinstance(state, str) else None,
            _fraction(data.get("progress")),
            data.get("data"),
            detail=detail if isinstance(detail, str) and detail else None,
        )


class FleetDisplay(Display):
    """Every listed run: one line per change of a run (``--json``: one object per event)."""

    def __init__(self, mode: str, out: TextIO, err: TextIO) -> None:
        super().__init__("*", "json" if mode == "json" else "lines", out, err)
        self._lines: dict[str, str] = {}

    def run_event(self, run_id: str, update: Update) -> None:
        if self.mode == "json":
            record: dict[str, Any] = {"run_id": run_id, "event": update.event, "id": update.id}
            record |= {"state": update.state, "progress": update.progress, "data": update.data}
            self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.out.flush()
            return
        body = update.data if isinstance(update.data, dict) else {}
        state = state_text(update)
        pct = update.progress * 100 if update.progress is not None else None
        if pct is None and update.event == "complete":
            pct = 100.0
        shown = f"{pct:5.1f}%  " if pct is not None else ""
        mark = {"complete": "✔ ", "error": "✘ "}.get(update.event, "")
        line = f"{mark}{run_id} {state:<12} {shown}{running_nodes(body)}".rstrip()
        if update.event == "error":
            message = message_of(body)
            if message:
                line += f": {message}"
        if self._lines.get(run_id) != line:
            self._lines[run_id] = line
            if len(self._lines) > 10_000:  # bounded: forget the oldest runs' last lines
                self._lines.pop(next(iter(self._lines)))
            self.console.print(line, markup=False)


class FleetWatch(Watch):
    """``watch`` without a run id: every listed run, until interrupted."""

    @property
    def stream_url(self) -> str:
        return self.base_url.rstrip("/") + "/v1/events"

    def handle(self, event: ParsedEvent) -> int | None:
        if event.event == "ping":
            return None
        if event.has_id:
            self.last_id = event.id
        if event.event == "timeout":
            return None  # the bridge ends streams after a while: resume where we are
        if event.event not in RUN_EVENTS:
            return None
        try:
            data = json.loads(event.data)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
            return None
        state, own = data.get("state"), data.get("id")
        update = Update(
            event.event,
            own if isinstance(own, str) else None,
            state if isinstance(state, str) else None,
            _fraction(data.get("progress")),
            data.get("data"),
        )
        display = self.display
        if isinstance(display, FleetDisplay):
            display.run_event(data["run_id"], update)
        return None


#: The comment of the bridge's EventSource-friendly refusal: "<code>[ (run <id>)]: <message>"
#: (bridge/web/reply.py, retry_reply).
_REFUSAL = re.compile(r"([a-z][a-z_]*)(?: \(run [^)]*\))?: (.+)")


def refusal_reason(comment: str | None) -> str | None:
    """The bridge's refusal comment as one reason: ``upstream unavailable: the upstream
    API could not be reached``; None for any other comment (or none)."""
    match = _REFUSAL.fullmatch(comment or "")
    if match is None:
        return None
    code, message = match[1], match[2].strip().rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]  # "The upstream" within a sentence
    return f"{code.replace('_', ' ')}: {message}"


def _retry_after(value: str | None) -> float:
    try:
        return max(0.5, min(float(value or 1), 60.0))
    except ValueError:
        return 1.0


async def _json_body(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await response.text(errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _sentence(body: Mapping[str, Any], status: int) -> str:
    if isinstance(body.get("message"), str):
        code = body.get("error", "")
        return f"{body['message']} (HTTP {status} {code})".replace(" )", ")")
    return f"the bridge answered HTTP {status}"


async def _message(response: aiohttp.ClientResponse) -> str:
    """The bridge's sentence from its JSON error body, with the status."""
    return _sentence(await _json_body(response), response.status)


#: Seconds one /result request waits (the bridge caps it at BRIDGE_LONGPOLL_MAX).
#: Longest line a derived event is printed as (its JSON, cut).
MAX_DERIVED_LINE = 300
RESULT_WAIT = 25


async def wait_result(
    run_id: str,
    url: str,
    headers: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    reconnect_for: float,
) -> int:
    """Long-poll the run's result until it ended; print the final status as one JSON line."""
    target = f"{url.rstrip('/')}/v1/runs/{quote(run_id, safe='')}/result"
    timeout = aiohttp.ClientTimeout(total=RESULT_WAIT + 15)
    loop = asyncio.get_running_loop()
    unreachable_since: float | None = None
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            try:
                async with http.get(
                    target, params={"wait": str(RESULT_WAIT)}, headers=dict(headers)
                ) as response:
                    if response.status == 200:
                        out.write(json.dumps(await _json_body(response)) + "\n")
                        ended = response.headers.get("X-Run-Event")
                        return EXIT_COMPLETE if ended == "complete" else EXIT_ERROR
                    if response.status == 202:
                        unreachable_since = None
                        continue  # still going: ask again
                    if response.status in (429, 502, 503, 504):
                        # A passing refusal (the upstream down, the bridge full) counts
                        # against --reconnect-for like an unreachable bridge.
                        said = await _message(response)
                        now = loop.time()
                        unreachable_since = unreachable_since or now
                        if now - unreachable_since >= reconnect_for:
                            err.write(
                                f"sse-bridge watch: no result from the bridge at {url} for "
                                f"{reconnect_for:g} s ({said})\n"
                            )
                            return EXIT_OTHER
                        err.write(f"sse-bridge watch: {said}; asking again\n")
                        await asyncio.sleep(_retry_after(response.headers.get("Retry-After")))
                        continue
                    err.write(f"sse-bridge watch: {await _message(response)}\n")
                    return EXIT_OTHER
            except (aiohttp.ClientError, TimeoutError):
                now = loop.time()
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= reconnect_for:
                    err.write("sse-bridge watch: the bridge stayed unreachable\n")
                    return EXIT_OTHER
                await asyncio.sleep(1.0)


def main(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    out, err = sys.stdout, sys.stderr
    if args.run_id is None:
        return _watch_all(args, environ, out, err)
    try:
        run_ids.validate(args.run_id)
    except InvalidRunId as error:
        err.write(f"sse-bridge watch: {error.message}\n")
        return EXIT_OTHER
    bridge = _bridge(args, environ, err)
    if bridge is None:
        return EXIT_OTHER
    headers, url = bridge
    if args.wait_result:
        return _run(wait_result(args.run_id, url, headers, out, err, args.reconnect_for))
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
        return _run(watch.run())


def _bridge(
    args: argparse.Namespace, environ: Mapping[str, str], err: TextIO
) -> tuple[dict[str, str], str] | None:
    """The headers and the bridge's URL asked for; None (said on ``err``) if refused."""
    try:
        headers = headers_from(args.header, environ)
    except Refused as error:
        err.write(f"sse-bridge watch: {error}\n")
        return None
    url = args.url or environ.get(ENV_URL) or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        err.write(f"sse-bridge watch: --url must start with http:// or https://, got {url!r}\n")
        return None
    return headers, url


def _run(watching: Coroutine[Any, Any, int]) -> int:
    """Run one watch to its exit code; 130 on Ctrl-C."""
    try:
        return asyncio.run(watching)
    except KeyboardInterrupt:
        return 130


def _watch_all(
    args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    """``watch`` without a run id: GET /v1/events until interrupted (2: refused)."""
    if args.wait_result:
        err.write("sse-bridge watch: --wait-result needs a RUN_ID\n")
        return EXIT_OTHER
    bridge = _bridge(args, environ, err)
    if bridge is None:
        return EXIT_OTHER
    headers, url = bridge
    display = FleetDisplay("json" if args.json else "lines", out, err)
    watch = FleetWatch(
        "*",
        url,
        headers,
        display,
        reconnect_for=args.reconnect_for,
        idle_timeout=args.idle_timeout,
    )
    return _run(watch.run())
