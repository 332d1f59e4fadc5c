"""Several runs on one SSE connection: ``GET /v1/streams?runs=a,b,c``.

Browsers open about six HTTP/1.1 connections per origin, so a page with one
``EventSource`` per run stalls from the seventh run. This stream carries the events of
up to ``BRIDGE_MULTI_MAX_RUNS`` runs on one connection:

- the event names are the single-run ones (``progress``, ``complete``, ``error``, plus
  ``ping`` and ``timeout`` for the whole connection);
- ``data`` is ``{"run_id": ..., "id": <the run's own event id>, "data": <the single-run
  data>}``;
- the ``id`` of every run event encodes the position of *every* run the viewer has
  received so far, so one ``Last-Event-ID`` (or ``cursor``) resumes all of them: each
  run replays from its own history after its own id, none twice;
- a run's ``complete``/``error`` ends that run only; the stream closes once every run
  has ended.

Each run is leased from the shared pollers exactly as for ``/v1/runs/{id}/stream`` (same
sharing, same forwarded credentials). If the upstream refuses any run, the whole request
is answered with that error (naming the run) and nothing is streamed.

The multi id is ``m1.`` followed by one ``<key>-<epoch>-<seq>`` entry per run (key: 40
bits of BLAKE2b of the run id, epoch and seq in base 36), joined with ``.``: URL-safe,
about 22 characters per run. Clients treat it as opaque.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from quart import Quart, Response, request

from bridge import run_id as run_ids
from bridge import sse
from bridge.app import SSE_HEADERS, Bridge, error_response, last_event_id, watched
from bridge.errors import BridgeError, Draining, InvalidRequest
from bridge.history import Event
from bridge.hub import Channel, Subscription
from bridge.stream import Keepalive, StreamLimits

VERSION = "m1"
#: Longest multi id accepted on resume (50 runs take about 1.1 kB); longer is ignored.
MAX_CURSOR_LENGTH = 32 * 1024
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class RunRefused(Exception):
    """One of the runs was refused: the whole request is answered with ``error``."""

    def __init__(self, run_id: str, error: BridgeError) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.error = error

    def body(self) -> dict[str, str]:
        return {**self.error.body(), "run_id": self.run_id}


def parse_runs(values: Iterable[str], max_runs: int) -> list[str]:
    """The run ids of ``?runs=a,b,c`` (repeatable), validated, duplicates merged."""
    runs: dict[str, None] = {}
    for value in values:
        for part in value.split(","):
            run_id = part.strip()
            if run_id:
                runs[run_ids.validate(run_id)] = None
    if not runs:
        raise InvalidRequest("Name the runs to stream: /v1/streams?runs=<id>,<id>,...")
    if len(runs) > max_runs:
        raise InvalidRequest(f"At most {max_runs} runs can share one stream.")
    return list(runs)


# --- the multi id --------------------------------------------------------------------


def run_key(run_id: str) -> str:
    return hashlib.blake2b(run_id.encode("ascii"), digest_size=5).hexdigest()


def _b36(number: int) -> str:
    if number == 0:
        return "0"
    out = []
    while number:
        number, digit = divmod(number, 36)
        out.append(_DIGITS[digit])
    return "".join(reversed(out))


def entry(key: str, epoch: int, seq: int) -> str:
    return f"{key}-{_b36(epoch)}-{_b36(seq)}"


def encode_cursor(entries: Iterable[str]) -> str:
    return ".".join([VERSION, *entries])


def decode_cursor(value: str | None) -> dict[str, tuple[int, int]]:
    """run key -> (epoch, seq); anything malformed is ignored (that run starts afresh)."""
    if not value or len(value) > MAX_CURSOR_LENGTH:
        return {}
    version, _, rest = value.strip().partition(".")
    if version != VERSION:
        return {}
    positions: dict[str, tuple[int, int]] = {}
    for item in rest.split("."):
        parts = item.split("-")
        if len(parts) != 3 or len(parts[0]) != 10 or not all(parts):
            continue
        key, epoch, seq = parts
        if len(epoch) > 12 or len(seq) > 12:
            continue
        try:
            int(key, 16)
            positions[key] = (int(epoch, 36), int(seq, 36))
        except ValueError:
            continue
    return positions


# --- one viewer's stream -------------------------------------------------------------


@dataclass(eq=False, slots=True)
class RunView:
    """One run as one viewer of a multi stream sees it."""

    run_id: str
    key: str
    subscription: Subscription
    #: The seq this viewer has (0: nothing yet from this history).
    seq: int = 0
    #: Its entry in the multi id, once the viewer has a position in this run.
    entry: str | None = None
    pending: list[Event] = field(default_factory=list)
    done: bool = False

    @property
    def channel(self) -> Channel:
        return self.subscription.channel

    def frame(self, event: Event, multi_id: str) -> bytes:
        data = (
            f'{{"run_id":{sse.encode_json(self.run_id)},'
            f'"id":{sse.encode_json(event.id)},"data":{event.data}}}'
        )
        return sse.frame(event.name, data, multi_id)


def position(view: RunView, resume: Mapping[str, tuple[int, int]]) -> None:
    """Place ``view`` after the viewer's id for its run (or at the current status)."""
    history = view.channel.history
    known = resume.get(view.key)
    run_event_id = f"{known[0]}-{known[1]}" if known is not None else None
    held = history.holds(run_event_id)
    view.pending = history.resume(run_event_id)
    if held is not None:
        view.seq = held
        view.entry = entry(view.key, history.epoch, held)
    view.done = not view.pending and history.terminal


async def multi_events(
    views: list[RunView], wake: asyncio.Event, limits: StreamLimits
) -> AsyncIterator[bytes]:
    """Frames for one viewer of several runs; ends when all ended, on timeout or close."""
    keepalive = Keepalive(limits)

    def collect() -> bool:
        found = False
        for view in views:
            if not view.done:
                view.pending = view.channel.history.after(view.seq, limits.viewer_buffer)
                found = found or bool(view.pending)
        return found

    yield sse.retry(limits.retry_ms)
    while True:
        for view in views:
            pending, view.pending = view.pending, []
            for event in pending:
                view.seq = event.seq
                view.entry = entry(view.key, view.channel.history.epoch, event.seq)
                multi_id = encode_cursor(v.entry for v in views if v.entry is not None)
                yield view.frame(event, multi_id)
                if event.terminal:
                    view.done = True
                    break
        if all(view.done for view in views):
            return
        if any(view.subscription.closed for view in views):
            return
        tick = keepalive.due()
        if tick is not None:
            frame, final = tick
            yield frame
            if final:
                return
            continue
        if collect():
            continue
        await keepalive.sleep(wake)
        collect()


async def lease_all(
    stack: AsyncExitStack, bridge: Bridge, runs: list[str], viewer: Mapping[str, str]
) -> list[Channel]:
    """One lease per run, taken concurrently, each released when ``stack`` closes.

    Each run is admitted and leased exactly as a single-run stream would be (forward-auth
    admission, then the poller shared by viewers with the same upstream headers).
    Raises RunRefused for the first run (in request order) that was refused, after every
    other attempt has finished (and its lease, if any, been put on ``stack``).
    """
    channels: dict[str, Channel] = {}
    refused: dict[str, BridgeError] = {}

    async def one(run_id: str) -> None:
        try:
            headers = await bridge.upstream_headers(run_id, dict(viewer))
            lease = bridge.pollers.lease(run_id, headers)
            channels[run_id] = await stack.enter_async_context(lease)
        except BridgeError as error:  # UpstreamError, or a refusal of the auth service
            refused[run_id] = error

    if len(runs) == 1:
        await one(runs[0])
    else:
        async with asyncio.TaskGroup() as group:
            for run_id in runs:
                group.create_task(one(run_id), name=f"multi-lease:{run_id}")
    for run_id in runs:
        if run_id in refused:
            raise RunRefused(run_id, refused[run_id])
    return [channels[run_id] for run_id in runs]


async def multi_body(
    bridge: Bridge,
    runs: list[str],
    viewer: Mapping[str, str],
    client: str,
    resume_from: str | None,
) -> AsyncGenerator[bytes, None]:
    """A stream slot, leases and subscriptions first, then frames.

    Every refusal (BridgeError, RunRefused) comes before the first yield, so the handler
    can still answer with an error status and JSON body. Yields nothing at all when the
    viewer already has every run's final event.
    """
    async with AsyncExitStack() as stack:
        # One connection, one slot of the stream limits, however many runs it carries.
        stack.enter_context(bridge.limiter.hold(client))
        channels = await lease_all(stack, bridge, runs, viewer)
        wake = asyncio.Event()
        resume = decode_cursor(resume_from)
        views = []
        for run_id, channel in zip(runs, channels, strict=True):
            subscription = await stack.enter_async_context(bridge.hub.subscribe(channel, wake=wake))
            view = RunView(run_id, run_key(run_id), subscription)
            position(view, resume)
            views.append(view)
        if all(view.done for view in views):
            return
        bridge.metrics.open_streams.inc()
        try:
            async for chunk in multi_events(views, wake, bridge.limits()):
                yield chunk
        finally:
            bridge.metrics.open_streams.dec()


def refusal_response(refusal: RunRefused) -> Response:
    """The upstream's refusal of one run, as the single-run stream answers it, naming the run."""
    response = error_response(refusal.error)
    answer = Response(
        sse.encode_json(refusal.body()),
        status=response.status_code,
        content_type="application/json",
    )
    if "Retry-After" in response.headers:
        answer.headers["Retry-After"] = response.headers["Retry-After"]
    return answer


# --- the route -----------------------------------------------------------------------


def register(app: Quart, bridge: Bridge) -> None:
    """``GET /v1/streams?runs=a,b,c``."""

    @app.get("/v1/streams")
    async def multi_stream() -> Response:
        runs = parse_runs(request.args.getlist("runs"), bridge.settings.multi_max_runs)
        if bridge.draining:
            raise Draining("The bridge is shutting down.")
        body = multi_body(
            bridge, runs, bridge.credentials(), bridge.client_address(), last_event_id()
        )
        try:
            opening = await anext(body)
        except StopAsyncIteration:
            # The viewer already has every run's final event: 204 stops EventSource.
            return Response("", status=204)
        except RunRefused as refusal:
            bridge.metrics.streams_refused.labels(refusal.error.code).inc()
            return refusal_response(refusal)
        bridge.metrics.streams_opened.inc()
        response = Response(watched(bridge, opening, body), headers=SSE_HEADERS)
        # Quart's RESPONSE_TIMEOUT would cut every stream; ours ends by itself.
        response.timeout = None
        return response
