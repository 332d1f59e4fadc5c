"""``GET /v1/events``: every run the upstream lists, in one SSE stream.

The list poller of the viewer's credential scope (bridge/polling/fleet.py) feeds each
listed run's channel and appends every event to its fleet log. A viewer gets:

- without a ``Last-Event-ID`` the log still holds: each listed run's current status,
  then every event of every listed run as it happens (a run that appears later arrives
  with its first status);
- with one: the events after it, none twice.

With ``delta=json-patch`` (enveloped frames), each run's later ``progress`` is a ``patch``
envelope as on ``/v1/streams`` (bridge/events/delta.py): the patch is the run's history's
own, made once per change; a run's first status this viewer gets is whole, and a viewer
resuming from an id the log holds gets the patches after it.

Frames are ``/v1/streams`` envelopes (``{"run_id", "id", "state", "progress", "data"}``,
the run's own event name), or with ``envelope=0`` each event exactly as the run's own
stream has it, so a client written for seed 001's ``/api/events`` works unchanged. A run's
``complete``/``error`` ends nothing here: the stream ends on ``timeout``, drain, or the
viewer leaving. Ids are the fleet log's (``<epoch>-<seq>``), opaque to clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

from prometheus_client import Gauge

from bridge.errors import BridgeError, InvalidRequest
from bridge.events import sse
from bridge.events.delta import PATCH, DeltaView, view_after
from bridge.events.history import Event, enveloped
from bridge.polling.fleet import Entry, Fleet, Fleets, FleetViewer, event_frame
from bridge.streams.keepalive import Keepalive, StreamLimits
from bridge.streams.limits import StreamLimiter
from bridge.streams.opening import Holding, Opened, start, take_slot
from bridge.streams.viewer import Viewer

#: What forward-auth mode asks the auth service about a stream of every run.
EVERY_RUN = "*"


class NoList(BridgeError):
    status = 404
    code = "not_found"

    def __init__(self) -> None:
        super().__init__(
            "GET /v1/events follows the upstream's list of runs, which is not configured "
            "(BRIDGE_UPSTREAM_LIST_PATH)."
        )


def parse_envelope(value: str | None) -> bool:
    """``envelope``: absent, ``1`` or ``true`` (envelopes), ``0`` or ``false`` (raw data)."""
    if value is None or value.strip().lower() in ("", "1", "true", "yes"):
        return True
    if value.strip().lower() in ("0", "false", "no"):
        return False
    raise InvalidRequest("envelope must be 0 or 1.")


class FleetOpener:
    """What opening ``GET /v1/events`` takes: the stream caps, admission of a stream of
    every run, the list pollers, the viewer's upstream headers, the stream limits of the
    moment and the open-streams gauge."""

    def __init__(
        self,
        *,
        limiter: StreamLimiter,
        admit: Callable[[dict[str, str]], Awaitable[None]],
        fleets: Fleets,
        headers: Callable[[Viewer], dict[str, str]],
        digest_secret: Callable[[], bytes],
        limits: Callable[[], StreamLimits],
        open_streams: Gauge,
    ) -> None:
        self._limiter = limiter
        self._admit = admit
        self._fleets = fleets
        self._headers = headers
        self._digest_secret = digest_secret
        self._limits = limits
        self._open_streams = open_streams

    async def __call__(self, viewer: Viewer, envelope: bool) -> Opened:
        """A stream slot, admission, the scope's list poller (its first list), then the
        first frame. Raises what refused the viewer (the list's 401/403/404, 502, ...)."""
        holding = Holding()
        take_slot(self._limiter, viewer.client, holding)
        try:
            await self._admit(dict(viewer.credentials))
            fleet = await self._fleets.take(self._headers(viewer), self._digest_secret())
            holding.callback(fleet.release)
            me = FleetViewer()
            fleet.viewers.add(me)
            holding.callback(fleet.viewers.discard, me)
            patches = Patches(fleet) if viewer.delta and envelope else None
            frames = fleet_frames(fleet, me, viewer.resume_from, self._limits(), envelope, patches)
            return await start(frames, holding, self._open_streams)
        except BaseException:
            holding.release()
            raise


class Patches:
    """One delta viewer's place in each listed run: the last whole status it holds."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._views: dict[str, DeltaView] = {}

    def frame(
        self, run_id: str, event: Event, frame_id: str, *, opening: bool = False
    ) -> bytes | None:
        """The ``patch`` envelope to send for ``event`` instead of it, if this viewer can
        apply one (None: send the event as it is). ``opening``: a run's current status as
        the stream opens, which the viewer does not hold yet."""
        channel = self._fleet.listed.get(run_id)
        if channel is None or channel.history.holds(event.id) != event.seq:
            # Left the list (its end is sent whole), or an event of an earlier channel.
            self._views.pop(run_id, None)
            return None
        view = self._views.get(run_id)
        if opening or view is None or view.history is not channel.history:
            # From the log, the viewer holds every sent event of the run before this one
            # (it had the run's status at its first open and each logged event since, or
            # resumed from an id after them): the patches go on after a resume.
            held = None if opening else event.seq - 1
            view = self._views[run_id] = view_after(channel.history, held)
        made = view.patch(event)
        if made is None:
            return None
        return sse.frame(PATCH, enveloped(run_id, event, made.data), frame_id)

    def entry(self, entry: Entry) -> bytes:
        made = self.frame(entry.run_id, entry.event, entry.id)
        return made if made is not None else entry.frame(True)


async def fleet_frames(
    fleet: Fleet,
    me: FleetViewer,
    resume: str | None,
    limits: StreamLimits,
    envelope: bool,
    patches: Patches | None = None,
) -> AsyncGenerator[bytes, None]:
    """Frames for one viewer of every listed run; ends on timeout, drain or close."""
    keepalive = Keepalive(limits)
    loop = asyncio.get_running_loop()
    log = fleet.log
    yield sse.retry(limits.retry_ms)
    seq = log.holds(resume)
    while True:
        if seq is None:
            # A new viewer, or one whose place the log no longer holds: where every run is.
            seq = log.last_seq
            at = log.current_id
            for run_id, event in list(fleet.current()):
                made = None
                if patches is not None:
                    made = patches.frame(run_id, event, at, opening=True)
                yield made if made is not None else event_frame(run_id, event, at, envelope)
        pending = log.after(seq)
        if pending and pending[0].seq > seq + 1:
            seq = None  # fell behind further than the log keeps
            continue
        for entry in pending:
            seq = entry.seq
            yield entry.frame(envelope) if patches is None else patches.entry(entry)
        if me.closed:
            if me.farewell:
                yield me.farewell
            return
        due = keepalive.due(loop.time())
        if due is not None:
            yield keepalive.frame(due)
            if due == "timeout":
                return
            continue
        if log.last_seq > seq:
            continue
        await keepalive.sleep(me.wake)
