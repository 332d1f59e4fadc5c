"""The poll loop: the only code that decides when a run's upstream is asked.

One ``Poller`` per channel key (run, credentials digest), started by the first viewer
and shared by every later one (bridge/polling/registry.py). What a fetched status becomes is its
``Ledger``'s business (bridge/polling/ledger.py: published here, or committed to Redis); the
loop owns everything about timing, in one place for both:

- a fixed cadence: poll k at start + k * interval, ticks a slow poll overran are
  skipped, never two polls of one run at once;
- failures: backoff with jitter (honouring Retry-After) and one last try exactly when
  BRIDGE_UPSTREAM_GIVE_UP runs out, then the bridge's own ``error``; a refusal (401, 403,
  404) ends the run at once;
- the first viewer waits on ``first``: resolved once the channel holds a current status,
  or failed with the upstream's answer to the first poll (single-flight cold connects);
- linger: the loop stops BRIDGE_LINGER seconds after the last viewer here left, unless
  it leads a run that viewers on other replicas still watch;
- a follower (cluster mode) steps once an interval, to sync, without polling.

Time comes from a ``Clock`` (``LoopClock`` when serving; tests/test_poll_loop.py drives
the loop in virtual time), and the ledger reaches the loop only through its ``Wakeup``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

from bridge.errors import ClusterUnavailable, UpstreamError, UpstreamRefused
from bridge.events import sse
from bridge.events.channel import Channel, ChannelKey
from bridge.ops.metrics import Metrics
from bridge.polling.ledger import Ledger, LedgerOwner, Observation
from bridge.polling.resilience import Backoff
from bridge.polling.status import Reading, StatusReader
from bridge.polling.upstream import Fetched, Validators
from bridge.settings import Settings

log = logging.getLogger("bridge.polling.poller")

Fetch = Callable[[str, Mapping[str, str], Validators | None], Awaitable[Fetched]]

#: Polls in a row without a readable state before the run is logged (once).
UNREAD_POLLS = 3
#: Failed polls in a row after which a leader that other replicas' viewers also watch
#: lets one of them lead (cluster mode: its own path to the upstream may be the trouble).
STEP_ASIDE_AFTER = 3


@dataclass(frozen=True, slots=True)
class Cadence:
    """The loop's timing, in seconds."""

    #: BRIDGE_POLL_INTERVAL: polls of a run in any other state, and how often a
    #: follower (cluster mode) syncs.
    interval: float
    backoff_max: float
    give_up: float
    linger: float
    #: BRIDGE_POLL_INTERVALS, keys case-folded.
    by_state: Mapping[str, float] = field(default_factory=dict)
    #: BRIDGE_POLL_INTERVAL_MAX: the longest wait an upstream hint may ask for.
    hint_max: float = 60.0

    @classmethod
    def of(cls, settings: Settings) -> Cadence:
        interval = settings.poll_interval
        return cls(
            interval=interval,
            backoff_max=max(settings.backoff_max, interval),
            give_up=settings.upstream_give_up,
            linger=settings.linger,
            by_state=dict(settings.poll_intervals),
            hint_max=settings.poll_interval_max,
        )

    def for_state(self, state: str | None) -> float:
        """The poll interval of a run in ``state`` (BRIDGE_POLL_INTERVALS, else the default)."""
        if state is None or not self.by_state:
            return self.interval
        return self.by_state.get(state.casefold(), self.interval)

    def first_poll(self, every: float, since: float | None) -> float:
        """Seconds a new leader waits before its first poll, ``since`` the last poll of
        anyone (None: unknown): one poll per interval, whoever polls, survives a handover."""
        return every if since is None else max(0.0, every - since)

    def after_answer(self, base: float, now: float, every: float, hint: float | None) -> float:
        """When to poll next after an answer that came at ``now``: one interval after
        ``base``, skipping the ticks a slow poll overran (never bunching up), and no
        sooner than the upstream's own hint asks (at most ``hint_max``)."""
        next_poll = base + every
        if next_poll <= now:
            next_poll += every * (1 + int((now - next_poll) // every))
        if hint is not None:
            next_poll = max(next_poll, now + min(hint, self.hint_max))
        return next_poll


class WarnOnce:
    """Logs each kind of trouble once per owner: a problem met at every tick is one line."""

    __slots__ = ("_log", "_logged")

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._logged: set[str] = set()

    def __call__(self, what: str, message: str, *args: object) -> None:
        if what not in self._logged:
            self._logged.add(what)
            self._log.warning(message, *args)


class Clock(Protocol):
    """The loop's time: ``monotonic`` seconds, and a sleep that a wake-up cuts short."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        """Return after ``seconds``, or as soon as ``wake`` is set."""


class LoopClock:
    """The real clock: ``time.monotonic`` and the event loop's timeouts."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wake.wait()


class Wakeup(LedgerOwner):
    """Why the loop should step before its next tick: what its ledger, a poke and its
    viewers tell it. The ledger holds this, never the poller, so nothing points back."""

    __slots__ = ("changed", "event", "nudged", "poked")

    def __init__(self) -> None:
        #: Set on any of the below, and when the viewers here change.
        self.event = asyncio.Event()
        self.nudged = False
        #: A poke came (POST /v1/runs/{id}/poll): poll at the next step, once.
        self.poked = False
        #: The channel changed between steps.
        self.changed = False

    def nudge(self) -> None:
        self.nudged = True
        self.event.set()

    def news(self) -> None:
        self.changed = True
        self.event.set()

    def poke(self) -> bool:
        """A poke during a poll in flight costs one more poll right after it, whatever the
        number of pokes: the change may have come after that poll's answer."""
        if self.poked:
            return False
        self.poked = True
        self.nudge()
        return True


class Poller:
    def __init__(
        self,
        key: ChannelKey,
        headers: Mapping[str, str],
        ledger: Ledger,
        wakeup: Wakeup,
        *,
        cadence: Cadence,
        fetch: Fetch,
        reader: StatusReader,
        on_stop: Callable[[Poller], None],
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``wakeup`` is the ``LedgerOwner`` that ``ledger`` was opened with."""
        self.key = key
        self.ledger = ledger
        self._wakeup = wakeup
        self._headers = dict(headers)
        self._cadence = cadence
        self._fetch_status = fetch
        self._reader = reader
        self._metrics = metrics
        self._clock = clock or LoopClock()
        #: The upstream's ETag / Last-Modified of this poller's last full answer.
        self._validators: Validators | None = None
        #: Polls in a row whose state was missing, unreadable or unknown.
        self._unread = 0
        self._warned = False
        self._on_stop = on_stop
        #: Viewers here holding a lease.
        self.leases = 0
        #: Resolved when the first viewer can have a status; failed when it cannot.
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self._idle_since: float | None = None
        self._next_poll: float | None = None
        #: When the upstream request in flight started (None: none in flight).
        self._polling_since: float | None = None
        self._failing_since: float | None = None
        self._failures = 0
        self._backoff = Backoff(cadence.interval, cadence.backoff_max, rng)

    @property
    def channel(self) -> Channel:
        return self.ledger.channel

    def start(self) -> asyncio.Task[None]:
        """Start the loop; the caller owns the task (and awaits it when it stops)."""
        assert self.task is None
        self.task = asyncio.create_task(self._run(), name=f"poller:{self.key.run_id}")
        return self.task

    # --- viewers -------------------------------------------------------------------

    def acquire(self) -> None:
        self.leases += 1
        self._idle_since = None

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._idle_since = self._clock.monotonic()
            self._wakeup.event.set()

    def poke(self) -> bool:
        """Poll at once (if leading); False when a poke was already pending (coalesced)."""
        return self._wakeup.poke()

    # --- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            next_step: float | None = self._clock.monotonic()
            while next_step is not None and await self._wait(next_step):
                next_step = await self._step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("poller for run %s failed", self.key.run_id)
        finally:
            if not self.first.done():
                self.first.set_exception(UpstreamError("The bridge stopped polling this run."))
            # Retrieve it so asyncio never reports "exception was never retrieved".
            if not self.first.cancelled():
                self.first.exception()
            self._on_stop(self)
            await self.ledger.close(self._polling_since)

    async def _step(self) -> float | None:
        """Sync, and poll when leading and due: when to step next (None: stop)."""
        try:
            return await self._sync_and_poll()
        except ClusterUnavailable as error:
            # The shared store is away: no lease, so no polling (another replica may
            # lead when it is back); viewers keep their streams and what they have.
            self._lose_lead()
            if not self.first.done():
                self.first.set_exception(error)
                return None
            return self._clock.monotonic() + self._cadence.interval

    async def _sync_and_poll(self) -> float | None:
        now = self._clock.monotonic()
        if not await self.ledger.sync(active=self._active(now)):
            return None
        if self._settled() or self._idle_done(now):
            return None
        return await self._synced_step(now)

    async def _synced_step(self, now: float) -> float | None:
        """The step of a poller still wanted, once synced: poll now, or when to step next."""
        interval = self._cadence.interval
        if not self.ledger.leads:
            self._lose_lead()
            return now + interval
        if self._wakeup.poked:
            self._wakeup.poked = False
            return await self._poll(poked=True)
        if self._next_poll is None:
            # A leader that cannot tell when the last poll was waits a whole interval;
            # the first viewer's poll waits for nothing.
            wait = 0.0
            if self.first.done():
                wait = self._cadence.first_poll(self._interval(), self.ledger.since_poll)
            self._next_poll = now + wait
        if now < self._next_poll:
            # Sync at least once an interval: a leader renews its lease meanwhile.
            return min(self._next_poll, now + interval)
        return await self._poll()

    async def _poll(self, *, poked: bool = False) -> float | None:
        """The leader's upstream request and what it becomes; when to step next."""
        started = self._clock.monotonic()
        first = not self.first.done()
        self._count_poll()
        try:
            fetched = await self._fetch(started)
        except UpstreamError as error:
            return await self._poll_failed(error, started)
        self._recovered()
        await self._record(fetched)
        if self._settled():
            return None
        now = self._clock.monotonic()
        if not self.ledger.leads:
            return now + self._cadence.interval
        # The cadence starts when the first answer came (or a poke's): runs whose first
        # viewers came together are then polled at the phases their answers took, not in
        # one burst whose fan-outs would queue behind each other.
        if first or poked:
            base = now
        else:
            base = self._next_poll if self._next_poll is not None else started
        self._next_poll = self._cadence.after_answer(base, now, self._interval(), fetched.wait)
        return min(self._next_poll, now + self._cadence.interval)

    def _count_poll(self) -> None:
        if self._metrics is not None:
            # Every viewer here and elsewhere would have polled on its own.
            self._metrics.polls_saved.inc(max(0, self.leases + self.ledger.others - 1))

    async def _fetch(self, started: float) -> Fetched:
        """The upstream request, marked in flight meanwhile (for the ledger's close)."""
        self._polling_since = started
        try:
            fetched = await self._request()
        except asyncio.CancelledError:
            # Stopped mid-poll (shutdown): still in flight as far as a successor is
            # concerned; the ledger's close is told when it started.
            raise
        except BaseException:
            self._polling_since = None
            raise
        self._polling_since = None
        return fetched

    async def _request(self) -> Fetched:
        """This poll's upstream request: the run's status."""
        return await self._fetch_status(self.key.run_id, self._headers, self._validators)

    async def _record(self, fetched: Fetched) -> None:
        """Hand the answer to the ledger; keep its validators for the next request."""
        status = fetched.status
        if status is None:
            await self.ledger.still()  # 304: as polled, unchanged
        else:
            data = sse.encode_json(status)
            reading = self._reader.read(status, data)
            self._check(reading)
            await self.ledger.record(Observation(data, reading))
        held = fetched.validators
        self._validators = held if held.etag or held.last_modified else None

    # --- errors --------------------------------------------------------------------

    async def _poll_failed(self, error: UpstreamError, started: float) -> float | None:
        """A poll the upstream refused or failed: when to step next (None: stop)."""
        if not self.first.done():
            # The first viewer gets the upstream's own answer.
            self.first.set_exception(error)
            return None
        if isinstance(error, UpstreamRefused):
            if await self.ledger.end(error.code, error.message):
                return None
            return self._clock.monotonic() + self._cadence.interval
        return await self._failed(error, started)

    async def _failed(self, error: UpstreamError, started: float) -> float | None:
        """A failed poll: step aside, back off, or give up once failures lasted long enough."""
        give_up = self._cadence.give_up
        self._failures += 1
        if (
            self._failures >= STEP_ASIDE_AFTER
            and self.ledger.others > 0
            and await self.ledger.step_aside()
        ):
            self._lose_lead()
            return self._clock.monotonic() + self._cadence.interval
        if self._failing_since is None:
            self._failing_since = started
            # Logged when a run starts failing and when it recovers, not per poll.
            log.warning("polls of run %s are failing: %s", self.key.run_id, error.code)
        now = self._clock.monotonic()
        if now - self._failing_since >= give_up:
            message = (
                f"The bridge gave up on the upstream API after {give_up:g} seconds of failures."
            )
            if await self.ledger.end("upstream_unavailable", message):
                return None
            return now + self._cadence.interval
        next_poll = now + self._backoff.next_delay(error.retry_after)
        # One last try exactly when the give-up time comes, not a backoff later.
        self._next_poll = min(next_poll, self._failing_since + give_up)
        return min(self._next_poll, now + self._cadence.interval)

    def _recovered(self) -> None:
        """A poll was answered: failures so far are over."""
        self._failures = 0
        if self._failing_since is not None:
            log.info("polls of run %s recovered", self.key.run_id)
            self._failing_since = None
            self._backoff.reset()

    def _check(self, reading: Reading) -> None:
        """Tell the operator, once, when the status filters do not fit this API."""
        if reading.state is not None and reading.known and reading.problem is None:
            self._unread = 0
            return
        self._unread += 1
        if self._unread < UNREAD_POLLS:
            return
        run = self.key.run_id
        if reading.problem is not None or reading.state is None:
            if not self._warned:
                self._warned = True
                why = reading.problem or "gave no state"
                log.warning(
                    "run %s: %s for %d polls in a row, so it counts as still going; check "
                    "BRIDGE_STATE_EXPR (or BRIDGE_STATUS_FIELD / BRIDGE_PROFILE) with "
                    "`sse-bridge inspect %s`",
                    run,
                    why,
                    self._unread,
                    run,
                )
        elif self._reader.first_warning(reading.state):
            log.warning(
                "run %s is in state %r, which is in neither BRIDGE_SUCCESS_STATUSES nor "
                "BRIDGE_FAILURE_STATUSES, so it counts as still going; if it is final, add "
                "it to one of them (`sse-bridge inspect %s` shows how the bridge reads it)",
                run,
                reading.state[:64],
                run,
            )

    # --- small parts ---------------------------------------------------------------

    def _settled(self) -> bool:
        """Answer a waiting first viewer if we can; True when the run has ended."""
        history = self.channel.history
        terminal = history.terminal
        current = self.ledger.fresh and history.latest is not None
        if (terminal or current) and not self.first.done():
            self.first.set_result(None)
        return terminal

    def _interval(self) -> float:
        """The interval of the run's current state (BRIDGE_POLL_INTERVALS)."""
        latest = self.channel.history.latest
        return self._cadence.for_state(latest.state if latest is not None else None)

    def _lose_lead(self) -> None:
        self._next_poll = None
        self._failing_since = None
        self._failures = 0
        self._backoff.reset()
        # Another replica may have polled meanwhile: our validators describe an answer
        # that may no longer be the latest one here; and pokes are the leader's.
        self._validators = None
        self._wakeup.poked = False

    def _active(self, now: float) -> bool:
        """Viewers here, or the linger after the last one left."""
        if self.leases > 0:
            return True
        return self._idle_since is not None and now < self._idle_since + self._cadence.linger

    def _idle_done(self, now: float) -> bool:
        """Time to stop: no viewer here for a linger, and none elsewhere if we lead."""
        if self._active(now) or self._idle_since is None:
            return False
        return not (self.ledger.leads and self.ledger.others > 0)

    async def _wait(self, until: float) -> bool:
        """Sleep until ``until``, a wake-up or a change of viewers; False: stop."""
        wakeup = self._wakeup
        while True:
            if wakeup.nudged:
                wakeup.nudged = False
                return True
            if wakeup.changed:
                wakeup.changed = False
                # A waiting first viewer can have it now; an ended run stops at once.
                if self._settled():
                    return True
            now = self._clock.monotonic()
            if self._idle_done(now):
                return False
            if now >= until:
                return True
            wake_at = until
            if self.leases == 0 and self._idle_since is not None:
                idle_end = self._idle_since + self._cadence.linger
                if idle_end > now:
                    wake_at = min(wake_at, idle_end)
            wakeup.event.clear()
            await self._clock.sleep(wake_at - now, wakeup.event)
