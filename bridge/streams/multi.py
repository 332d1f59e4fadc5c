"""Several runs on one SSE connection: ``GET /v1/streams?runs=a,b,c``.

Browsers open about six HTTP/1.1 connections per origin, so a page with one
``EventSource`` per run stalls from the seventh run. This stream carries the events of
up to ``BRIDGE_MULTI_MAX_RUNS`` runs on one connection:

- the event names are the single-run ones (``progress``, ``complete``, ``error``, plus
  ``ping`` and ``timeout`` for the whole connection);
- ``data`` is ``{"run_id": ..., "id": <the run's own event id>, "state": <the run's state
  as BRIDGE_STATE_EXPR reads it, or null>, "progress": <0 to 1 from BRIDGE_PROGRESS_EXPR,
  or null>, "detail": <one line from BRIDGE_DETAIL_EXPR, or null>, "data": <the single-run
  data>}``;
- the ``id`` of every run event encodes the position of *every* run the viewer has
  received so far, so one ``Last-Event-ID`` (or ``cursor``) resumes all of them: each
  run replays from its own history after its own id, none twice;
- a run's ``complete``/``error`` ends that run only; the stream closes once every run
  has ended.

The stream opens exactly as ``/v1/runs/{id}/stream`` does (bridge/streams/opening.py: one stream
slot, the same shared pollers and forwarded credentials per run). If the upstream refuses
any run, the whole request is answered with that error (naming the run) and nothing is
streamed. Here: the multi id, and where each run starts and what its frames look like.

The multi id is ``m1.`` followed by one ``<key>-<epoch>-<seq>`` entry per run (key: 40
bits of BLAKE2b of the run id, epoch and seq in base 36), joined with ``.``: URL-safe,
about 22 characters per run. Clients treat it as opaque.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field

from bridge import run_id as run_ids
from bridge.errors import InvalidRequest
from bridge.events import sse
from bridge.events.channel import Channel, Subscription
from bridge.events.delta import PATCH, DeltaView, view_after
from bridge.events.history import Event, RunHistory, enveloped
from bridge.streams.keepalive import Keepalive, StreamLimits
from bridge.streams.viewer import Viewer

VERSION = "m1"
#: Longest multi id accepted on resume (50 runs take about 1.1 kB); longer is ignored.
MAX_CURSOR_LENGTH = 32 * 1024
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


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
    #: ``envelope=0``: each event's data as the run's own stream has it.
    envelope: bool = True
    #: Set for a viewer that asked for ``delta=json-patch``.
    delta: DeltaView | None = None

    @property
    def channel(self) -> Channel:
        return self.subscription.channel

    def frame(self, event: Event, multi_id: str) -> bytes:
        if not self.envelope:
            return sse.frame(event.name, event.data, multi_id)
        name, body = event.name, event.data
        made = self.delta.patch(event) if self.delta is not None else None
        if made is not None:
            name, body = PATCH, made.data
        return sse.frame(name, enveloped(self.run_id, event, body), multi_id)


def position(view: RunView, resume: Mapping[str, tuple[int, int]]) -> None:
    """Place ``view`` after the viewer's id for its run (or at the current status)."""
    history = view.channel.history
    known = resume.get(view.key)
    run_event_id = f"{known[0]}-{known[1]}" if known is not None else None
    # The multi id names a run's events by ``<epoch>-<seq>``, a feed's too (whose own
    # ``holds`` reads the upstream's cursors).
    held = RunHistory.holds(history, run_event_id)
    view.pending = history.after(held) if held is not None else history.resume(run_event_id)
    if held is not None:
        view.seq = held
        view.entry = entry(view.key, history.epoch, held)
    view.done = history.terminal and not any(event.sent for event in view.pending)


def multi_frames(
    subscriptions: list[Subscription],
    viewer: Viewer,
    limits: StreamLimits,
    envelope: bool = True,
) -> AsyncGenerator[bytes, None] | None:
    """The multi-run framer (see bridge/streams/opening.py): each run placed after its own
    id; ``envelope=False`` sends each event's data as the run's own stream has it."""
    resume = decode_cursor(viewer.resume_from)
    views = []
    for subscription in subscriptions:
        run_id = subscription.channel.key.run_id
        view = RunView(run_id, run_key(run_id), subscription, envelope=envelope)
        position(view, resume)
        if viewer.delta:
            view.delta = view_after(view.channel.history, view.seq or None)
        views.append(view)
    if all(view.done for view in views):
        return None  # the viewer already has every run's final event
    return multi_events(views, subscriptions[0].wake, limits)


async def multi_events(
    views: list[RunView], wake: asyncio.Event, limits: StreamLimits
) -> AsyncGenerator[bytes, None]:
    """Frames for one viewer of several runs; ends when all ended, on timeout or close."""
    keepalive = Keepalive(limits)
    loop = asyncio.get_running_loop()

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
                if event.sent:
                    multi_id = encode_cursor(v.entry for v in views if v.entry is not None)
                    yield view.frame(event, multi_id)
                if event.terminal:
                    view.done = True
                    break
        if all(view.done for view in views):
            return
        closed = [view.subscription for view in views if view.subscription.closed]
        if closed:
            if closed[0].farewell:
                yield closed[0].farewell
            return
        due = keepalive.due(loop.time())
        if due is not None:
            yield keepalive.frame(due)
            if due == "timeout":
                return
            continue
        if collect():
            continue
        await keepalive.sleep(wake)
        collect()
