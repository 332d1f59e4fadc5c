"""The poll loop alone, in virtual time: cadence, skipped ticks, backoff with jitter,
give-up, linger, the upstream's hints, per-state intervals, pokes and stepping aside.

No server and no real sleep: the loop gets a ``FakeClock`` whose time moves only when a
test moves it (each sleep the loop asks for ends exactly at its deadline), a scripted
upstream, and a ``FakeLedger`` (the one-process ledger on a real channel, with what only
cluster mode does, following and stepping aside, set by the test). The way Hypercorn's
tests/protocol/ drive its state machines with mocked I/O.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bridge.errors import ClusterUnavailable, UpstreamError, UpstreamRefused, UpstreamUnavailable
from bridge.events import sse
from bridge.events.channel import Channel, ChannelKey
from bridge.events.history import RunHistory
from bridge.polling.ledger import LedgerOwner, LocalLedger
from bridge.polling.poller import STEP_ASIDE_AFTER, Cadence, Poller, Wakeup
from bridge.polling.resilience import Backoff
from bridge.polling.status import StatusReader
from bridge.polling.upstream import Fetched, Validators
from bridge.tasks import cancel_and_wait

T0 = 1000.0
READER = StatusReader(state_expr=".status", success=["completed"], failure=["failed"])
CADENCE = Cadence(interval=1.0, backoff_max=8.0, give_up=30.0, linger=5.0, hint_max=60.0)


class FakeClock:
    """Virtual monotonic time; ``sleep`` parks until the test moves time past its deadline
    or ``wake`` is set."""

    def __init__(self) -> None:
        self.now = T0
        self.deadline: float | None = None
        self._alarm: asyncio.Future[None] | None = None
        self._wake: asyncio.Event | None = None

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        assert self._alarm is None, "one sleeper at a time"
        loop = asyncio.get_running_loop()
        self.deadline = self.now + seconds
        self._alarm = alarm = loop.create_future()
        self._wake = wake
        woken = loop.create_task(wake.wait())
        try:
            await asyncio.wait([alarm, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            await asyncio.wait([woken])
            self._alarm = self._wake = self.deadline = None

    @property
    def parked(self) -> bool:
        """A sleep is waiting and nothing has ended it yet."""
        alarm, wake = self._alarm, self._wake
        return alarm is not None and not alarm.done() and wake is not None and not wake.is_set()

    def ring(self) -> None:
        """Time reached the parked sleep's deadline."""
        assert self._alarm is not None and self.deadline is not None
        self.now = max(self.now, self.deadline)
        self._alarm.set_result(None)


@dataclass
class FakeUpstream:
    """``fetch`` as the poll loop calls it: answers ``status`` (or what ``script`` holds
    next: a Fetched, or an error to raise), taking ``duration`` seconds of virtual time."""

    clock: FakeClock
    status: dict[str, Any] = field(default_factory=lambda: {"status": "running"})
    wait: float | None = None
    duration: float = 0.0
    script: deque[Fetched | UpstreamError] = field(default_factory=deque)
    #: While set, a poll waits for it (a poll in flight).
    gate: asyncio.Event | None = None
    in_flight: bool = False
    #: When each request was made, relative to T0.
    times: list[float] = field(default_factory=list)

    async def fetch(
        self, run_id: str, headers: Mapping[str, str], validators: Validators | None
    ) -> Fetched:
        self.times.append(self.clock.now - T0)
        if self.gate is not None:
            self.in_flight = True
            try:
                await self.gate.wait()
            finally:
                self.in_flight = False
        self.clock.now += self.duration
        answer = self.script.popleft() if self.script else None
        if isinstance(answer, UpstreamError):
            raise answer
        if answer is not None:
            return answer
        return Fetched(dict(self.status), Validators(), self.wait)


class FakeLedger(LocalLedger):
    """The one-process ledger on a real channel; following (``leads``), viewers on other
    replicas (``others``), stepping aside and a store that is away are set by the test."""

    def __init__(self, channel: Channel, owner: LedgerOwner, clock: FakeClock) -> None:
        super().__init__(channel, owner, None)
        self.clock = clock
        #: (when, active) of each sync, relative to T0.
        self.syncs: list[tuple[float, bool]] = []
        self.away = False
        self.will_step_aside = False
        self.asides = 0
        self.closed: list[float | None] = []

    async def sync(self, *, active: bool) -> bool:
        self.syncs.append((self.clock.now - T0, active))
        if self.away:
            raise ClusterUnavailable()
        return True

    async def step_aside(self) -> bool:
        self.asides += 1
        if self.will_step_aside:
            self.leads = False
        return self.will_step_aside

    async def close(self, in_flight: float | None) -> None:
        self.closed.append(in_flight)


class MaxJitter(random.Random):
    """No jitter: every backoff is its full nominal delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Rig:
    clock: FakeClock
    upstream: FakeUpstream
    ledger: FakeLedger
    poller: Poller

    @property
    def task(self) -> asyncio.Task[None]:
        assert self.poller.task is not None
        return self.poller.task

    @property
    def channel(self) -> Channel:
        return self.poller.channel

    async def settle(self) -> None:
        """Let the loop run until it sleeps, waits on the upstream, or stopped."""
        for _ in range(1000):
            await asyncio.sleep(0)
            if self.task.done() or self.clock.parked or self.upstream.in_flight:
                return
        raise AssertionError("the poll loop never settled")

    async def run_until(self, t: float) -> None:
        """Move time to T0 + ``t``, ending every sleep due by then, in order."""
        await self.settle()
        clock = self.clock
        while not self.task.done() and clock.deadline is not None and clock.deadline <= T0 + t:
            clock.ring()
            await self.settle()
        if not self.task.done():  # a stopped loop keeps the time it stopped at
            clock.now = max(clock.now, T0 + t)

    @property
    def t(self) -> float:
        return self.clock.now - T0


@asynccontextmanager
async def running(
    cadence: Cadence = CADENCE,
    *,
    rng: random.Random | None = None,
    leads: bool = True,
    setup: Callable[[Rig], None] | None = None,
) -> AsyncIterator[Rig]:
    """A poller with one viewer, started; stopped (and awaited) at the end."""
    clock = FakeClock()
    upstream = FakeUpstream(clock)
    channel = Channel(ChannelKey("run", "digest"), RunHistory(16, 1 << 20))
    wakeup = Wakeup()
    ledger = FakeLedger(channel, wakeup, clock)
    ledger.leads = leads
    poller = Poller(
        ChannelKey("run", "digest"),
        {},
        ledger,
        wakeup,
        cadence=cadence,
        fetch=upstream.fetch,
        reader=READER,
        on_stop=lambda _: None,
        clock=clock,
        rng=rng,
    )
    rig = Rig(clock, upstream, ledger, poller)
    if setup is not None:
        setup(rig)
    poller.acquire()
    task = poller.start()
    try:
        await rig.settle()
        yield rig
    finally:
        await cancel_and_wait(task)


# --- cadence ---------------------------------------------------------------------------


async def test_polls_on_a_fixed_cadence_from_the_first_answer() -> None:
    async with running() as rig:
        assert rig.poller.first.done() and rig.upstream.times == [0.0]
        await rig.run_until(4.5)
        assert rig.upstream.times == [0.0, 1.0, 2.0, 3.0, 4.0]
        # An unchanged status is no news: one event.
        assert len(rig.channel.history) == 1


async def test_a_slow_poll_skips_the_ticks_it_overran() -> None:
    async with running() as rig:
        rig.upstream.duration = 2.5  # the poll at 1 answers at 3.5
        await rig.run_until(1.0)
        assert rig.t == 3.5
        rig.upstream.duration = 0.0
        await rig.run_until(6.0)
        # Ticks 2 and 3 were overrun: the next poll keeps the phase, at 4.
        assert rig.upstream.times == [0.0, 1.0, 4.0, 5.0, 6.0]


async def test_per_state_intervals_follow_the_latest_state() -> None:
    cadence = replace(CADENCE, by_state={"queued": 4.0})
    async with running(cadence) as rig:
        rig.upstream.status = {"status": "QUEUED"}  # states are case-folded
        await rig.run_until(1.0)
        await rig.run_until(5.5)
        assert rig.upstream.times == [0.0, 1.0, 5.0]
        rig.upstream.status = {"status": "running"}
        await rig.run_until(11.0)
        # Polled at 9 as queued was; the answer "running" brings the default back.
        assert rig.upstream.times == [0.0, 1.0, 5.0, 9.0, 10.0, 11.0]


async def test_the_upstream_hint_delays_the_next_poll_within_hint_max() -> None:
    async with running() as rig:
        rig.upstream.wait = 10.0
        await rig.run_until(1.0)
        rig.upstream.wait = None
        await rig.run_until(12.0)
        assert rig.upstream.times == [0.0, 1.0, 11.0, 12.0]
        # Meanwhile the loop still synced once an interval (a leader renews its lease).
        assert [t for t, _ in rig.ledger.syncs if 1.0 < t < 11.0] == [
            2.0,
            3.0,
            4.0,
            5.0,
            6.0,
            7.0,
            8.0,
            9.0,
            10.0,
        ]
        rig.upstream.wait = 3600.0
        await rig.run_until(13.0)
        rig.upstream.wait = None
        await rig.run_until(73.0)
        assert rig.upstream.times[-2:] == [13.0, 73.0]  # capped at hint_max


# --- failures --------------------------------------------------------------------------


async def test_failures_back_off_with_jitter() -> None:
    rng_seed = 3
    async with running(rng=random.Random(rng_seed)) as rig:
        rig.upstream.script.extend(UpstreamUnavailable("down") for _ in range(6))
        expected = Backoff(1.0, 8.0, random.Random(rng_seed))
        delays = [expected.next_delay() for _ in range(5)]
        await rig.run_until(1.0 + sum(delays) + 0.01)
        times = rig.upstream.times
        assert times[:2] == [0.0, 1.0]
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert gaps == pytest.approx(delays)
        nominal = [1.0, 2.0, 4.0, 8.0, 8.0]
        assert all(0.5 * n <= d <= n for d, n in zip(delays, nominal, strict=True))
        assert gaps != pytest.approx(nominal)  # jittered, not the nominal delays


async def test_retry_after_is_honoured_and_recovery_resets_the_backoff() -> None:
    async with running(rng=MaxJitter()) as rig:
        rig.upstream.script.append(UpstreamUnavailable("busy", retry_after=7.0))
        await rig.run_until(9.0)
        assert rig.upstream.times == [0.0, 1.0, 8.0, 9.0]
        rig.upstream.script.append(UpstreamUnavailable("down"))
        await rig.run_until(11.0)
        # A fresh run of failures starts from the base delay again.
        assert rig.upstream.times == [0.0, 1.0, 8.0, 9.0, 10.0, 11.0]


async def test_gives_up_with_one_last_try_exactly_at_the_give_up_time() -> None:
    cadence = replace(CADENCE, give_up=5.0)
    async with running(cadence, rng=MaxJitter()) as rig:
        rig.upstream.script.extend(UpstreamUnavailable("down") for _ in range(10))
        await rig.run_until(20.0)
        # Failing since 1: backoff 1, 2, 4 would poll at 8; the last try is at 6.
        assert rig.upstream.times == [0.0, 1.0, 2.0, 4.0, 6.0]
        assert rig.task.done() and rig.t == 6.0
        latest = rig.channel.history.latest
        assert latest is not None and latest.name == sse.ERROR
        assert "gave up on the upstream API after 5 seconds" in latest.data
        assert rig.channel.synthetic_end


async def test_a_refusal_ends_the_run_at_once() -> None:
    async with running() as rig:
        rig.upstream.script.append(UpstreamRefused(404))
        await rig.run_until(5.0)
        assert rig.upstream.times == [0.0, 1.0]
        assert rig.task.done() and rig.t == 1.0
        latest = rig.channel.history.latest
        assert latest is not None and latest.name == sse.ERROR and "not_found" in latest.data


async def test_a_failed_first_poll_fails_the_first_viewer_and_stops() -> None:
    def refused(rig: Rig) -> None:
        rig.upstream.script.append(UpstreamUnavailable("down"))

    async with running(setup=refused) as rig:
        assert rig.task.done()
        assert isinstance(rig.poller.first.exception(), UpstreamUnavailable)
        assert rig.upstream.times == [0.0] and rig.ledger.closed == [None]


async def test_a_leader_that_keeps_failing_steps_aside_for_other_replicas() -> None:
    async with running(rng=MaxJitter()) as rig:
        rig.ledger.others = 1
        rig.ledger.will_step_aside = True
        rig.upstream.script.extend(UpstreamUnavailable("down") for _ in range(10))
        await rig.run_until(10.0)
        # Failures at 1, 2 (after 1 s) and 4 (after 2 s): the third hands the lead over.
        assert STEP_ASIDE_AFTER == 3
        assert rig.upstream.times == [0.0, 1.0, 2.0, 4.0]
        assert rig.ledger.asides == 1 and not rig.ledger.leads
        # Following: one sync an interval, no upstream request.
        assert [t for t, _ in rig.ledger.syncs if t > 4.0] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


async def test_a_leader_alone_never_steps_aside() -> None:
    async with running(rng=MaxJitter()) as rig:
        rig.upstream.script.extend(UpstreamUnavailable("down") for _ in range(10))
        await rig.run_until(16.0)
        assert rig.upstream.times == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
        assert rig.ledger.asides == 0  # nobody to hand over to


# --- viewers ---------------------------------------------------------------------------


async def test_lingers_after_the_last_viewer_then_stops() -> None:
    async with running() as rig:
        await rig.run_until(2.5)
        rig.poller.release()
        await rig.run_until(30.0)
        assert rig.upstream.times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        # Stopped exactly when the linger (5 s) after the last viewer ran out.
        assert rig.task.done() and rig.t == 7.5
        assert rig.ledger.closed == [None]


async def test_a_viewer_back_within_the_linger_keeps_the_poller() -> None:
    async with running() as rig:
        await rig.run_until(2.5)
        rig.poller.release()
        await rig.run_until(6.5)
        rig.poller.acquire()
        await rig.run_until(20.0)
        assert not rig.task.done() and rig.upstream.times[-1] == 20.0
        # While lingering the ledger heard the poller was still active.
        assert all(active for _, active in rig.ledger.syncs)


async def test_a_leader_keeps_polling_for_viewers_on_other_replicas() -> None:
    async with running() as rig:
        rig.ledger.others = 2
        rig.poller.release()
        await rig.run_until(12.0)
        assert not rig.task.done() and rig.upstream.times[-1] == 12.0
        # Past the linger it tells the ledger it has no viewers of its own.
        assert rig.ledger.syncs[-1] == (12.0, False)
        rig.ledger.others = 0
        await rig.run_until(20.0)
        assert rig.task.done() and rig.t == 13.0


# --- pokes and the ledger's wake-ups ---------------------------------------------------


async def test_pokes_coalesce_into_one_poll_now() -> None:
    async with running() as rig:
        await rig.run_until(0.25)
        assert rig.poller.poke() is True
        assert rig.poller.poke() is False  # already pending: coalesced
        await rig.settle()
        await rig.run_until(2.5)
        # The cadence restarts from the poke's answer.
        assert rig.upstream.times == [0.0, 0.25, 1.25, 2.25]


async def test_a_poke_during_a_poll_in_flight_costs_one_more_poll() -> None:
    async with running() as rig:
        rig.upstream.gate = asyncio.Event()
        await rig.run_until(1.0)
        assert rig.upstream.in_flight
        assert [rig.poller.poke() for _ in range(3)] == [True, False, False]
        rig.upstream.gate.set()
        rig.upstream.gate = None
        await rig.settle()
        await rig.run_until(2.5)
        assert rig.upstream.times == [0.0, 1.0, 1.0, 2.0]


async def test_a_follower_never_polls_and_news_answers_its_first_viewer() -> None:
    async with running(leads=False) as rig:
        await rig.run_until(2.5)
        assert not rig.poller.first.done() and rig.upstream.times == []
        assert [t for t, _ in rig.ledger.syncs] == [0.0, 1.0, 2.0]
        # The leader's event arrives by pub/sub between steps.
        rig.channel.publish(sse.PROGRESS, sse.encode_json({"status": "running"}))
        rig.ledger.fresh = True
        rig.ledger.owner.news()
        await rig.settle()
        assert rig.poller.first.done() and rig.poller.first.exception() is None
        assert rig.upstream.times == []


async def test_news_of_the_end_stops_a_follower_at_once() -> None:
    async with running(leads=False) as rig:
        await rig.run_until(1.5)
        rig.channel.publish(sse.COMPLETE, sse.encode_json({"status": "completed"}))
        rig.ledger.owner.news()
        await rig.settle()
        assert rig.task.done() and rig.t == 1.5


async def test_a_nudge_makes_the_loop_sync_now() -> None:
    async with running(leads=False) as rig:
        await rig.run_until(0.5)
        rig.ledger.owner.nudge()
        await rig.settle()
        assert [t for t, _ in rig.ledger.syncs] == [0.0, 0.5]


async def test_a_new_leader_keeps_the_cadence_of_the_last_poll() -> None:
    async with running(leads=False) as rig:
        rig.channel.publish(sse.PROGRESS, sse.encode_json({"status": "running"}))
        rig.ledger.fresh = True
        rig.ledger.owner.news()
        await rig.run_until(0.5)
        assert rig.poller.first.done()
        # The lease is taken at the next sync (1.0); the last poll was 0.4 s before it.
        rig.ledger.leads = True
        rig.ledger.since_poll = 0.4
        await rig.run_until(3.0)
        assert rig.upstream.times == pytest.approx([1.6, 2.6])


async def test_a_store_away_fails_the_first_viewer_and_stops() -> None:
    def away(rig: Rig) -> None:
        rig.ledger.away = True

    async with running(setup=away) as rig:
        assert rig.task.done()
        assert isinstance(rig.poller.first.exception(), ClusterUnavailable)
        assert rig.upstream.times == []


async def test_a_store_away_later_pauses_polling_until_it_is_back() -> None:
    async with running() as rig:
        await rig.run_until(1.5)
        rig.ledger.away = True
        await rig.run_until(4.5)
        assert rig.upstream.times == [0.0, 1.0] and not rig.task.done()
        rig.ledger.away = False
        await rig.run_until(6.0)
        # Back: a leader that cannot tell when the last poll was waits an interval.
        assert rig.upstream.times == [0.0, 1.0, 6.0]


async def test_a_poll_in_flight_at_shutdown_is_told_to_the_ledger() -> None:
    async with running() as rig:
        rig.upstream.gate = asyncio.Event()
        await rig.run_until(1.0)
        await cancel_and_wait(rig.task)
        assert rig.ledger.closed == [T0 + 1.0]


async def test_a_stopped_poller_is_freed_without_the_cycle_collector() -> None:
    """The ledger reaches the loop only through its Wakeup: no cycle through the poller."""
    gc.disable()
    try:
        async with running() as rig:
            rig.poller.release()
            await rig.run_until(10.0)
            assert rig.task.done()  # the linger ran out
            gone = weakref.ref(rig.poller)
            ledger = rig.ledger
            del rig
        assert isinstance(ledger.owner, Wakeup)
        assert gone() is None
    finally:
        gc.enable()
