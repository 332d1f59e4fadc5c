"""Cluster mode's pollers: one per channel key on each replica that has its viewers.

Every poller ticks once per poll interval (one Lua script: refresh this replica's
interest, renew or take the lease, read the history's head) and keeps the replica's
local copy of the history in step with Redis. The one holding the lease *leads*: it
polls the upstream on the fixed cadence and commits each change to Redis (a script that
only the lease holder passes, on top of the history it has), which numbers the event
and publishes it; every replica, the leader too, copies it into its local channel with
that id. The others *follow*: no upstream request, their viewers get what the leader
published (pub/sub at once, the tick repairs anything missed).

A replica with viewers takes a free lease; a leader whose own viewers left keeps polling
while another replica still has viewers, then gives the lease up. A dead leader's lease
expires (a few intervals plus the upstream timeout) and a follower with viewers takes
over, continuing the same history (same epoch, next seq).

A new poller answers its first viewer like the one-process bridge: from history when a
leader has polled it (no upstream request), else with its own first upstream request,
whose refusal or failure reaches that viewer as the same error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from bridge import sse
from bridge.cluster.link import REDIS_FAILURES, ClusterUnavailable, RedisLink
from bridge.cluster.store import (
    NOT_HOLDER,
    PROGRESS,
    SYNTHETIC,
    TERMINAL,
    WRITTEN,
    Record,
    Store,
    parse_channel_name,
)
from bridge.errors import UpstreamError, UpstreamRefused
from bridge.hub import Channel, ChannelKey, Hub
from bridge.metrics import Metrics
from bridge.pollers import Poller, PollerRegistry, credentials_digest
from bridge.resilience import Backoff
from bridge.settings import Settings
from bridge.status import is_terminal
from bridge.upstream import UpstreamClient

log = logging.getLogger("bridge.cluster")

UNAVAILABLE = "The bridge cannot reach its Redis right now; try again shortly."


@dataclass(frozen=True, slots=True)
class ClusterContext:
    settings: Settings
    link: RedisLink
    store: Store

    async def resign(self, pollers: list[tuple[ChannelKey, str]]) -> None:
        """Give up these pollers' leases and interests now (bounded; Redis may be gone)."""
        if not pollers or not self.link.up:
            return  # the leases expire by themselves
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                await self.store.resign(pollers)
        except REDIS_FAILURES as error:
            self.link.trouble(error)


class ClusterPoller(Poller):
    def __init__(
        self,
        registry: ClusterRegistry,
        key: ChannelKey,
        headers: Mapping[str, str],
        channel: Channel,
    ) -> None:
        self._ctx = registry.ctx
        self.token = registry.new_token()
        #: Holds the lease (as of the last tick or commit).
        self.leader = False
        #: Set when the registry gives up the lease for us (shutdown).
        self.resigned = False
        self._others = 0
        self._since_poll: int | None = None
        self._fresh = False
        self._diverged = False
        self._tick_now = False
        self._next_poll: float | None = None
        self._failing_since: float | None = None
        interval = self._ctx.settings.poll_interval
        self._backoff = Backoff(interval, max(self._ctx.settings.backoff_max, interval))
        super().__init__(registry, key, headers, channel)

    # --- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            next_tick: float | None = time.monotonic()
            while next_tick is not None and await self._wait(next_tick):
                next_tick = await self._step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cluster poller for run %s failed", self.key.run_id)
        finally:
            self._finish()
            if not self.resigned:
                self.resigned = True
                await self._ctx.resign([(self.key, self.token)])

    async def _step(self) -> float | None:
        """One tick, and the poll when leading and due: when to step next (None: stop)."""
        interval = self._ctx.settings.poll_interval
        now = time.monotonic()
        if self._ctx.link.up:
            try:
                return await self._tick_and_poll(now)
            except REDIS_FAILURES as error:
                self._ctx.link.trouble(error)
        # Redis is away: no lease to renew, so no polling (another replica may lead
        # when it is back); viewers keep their streams and what they have.
        self._lose_lead()
        if not self.first.done():
            self.first.set_exception(ClusterUnavailable(UNAVAILABLE))
            return None
        return now + interval

    async def _tick_and_poll(self, now: float) -> float | None:
        interval = self._ctx.settings.poll_interval
        await self._tick()
        history = self.channel.history
        if self._diverged:
            log.warning(
                "cluster: run %s has another history in Redis than this replica's copy; "
                "its viewers here reconnect and resume",
                self.key.run_id,
            )
            self.channel.close_all()
            return None
        if history.terminal:
            self._resolve_first()
            return None
        if self._fresh and history.latest is not None:
            self._resolve_first()
        if self._idle_done(now):
            return None
        if not self.leader:
            self._lose_lead()
            return now + interval
        if self._next_poll is None:
            # Taking over keeps the cadence: one poll per interval, whoever polls.
            since = self._since_poll
            wait = 0.0
            if self.first.done() and since is not None:
                wait = max(0.0, interval - since / 1000)
            self._next_poll = now + wait
        if now < self._next_poll:
            return min(self._next_poll, now + interval)
        return await self._poll()

    async def _poll(self) -> float | None:
        """The leader's upstream request and its commit; when to step next."""
        settings = self._ctx.settings
        interval = settings.poll_interval
        started = time.monotonic()
        try:
            status = await self._fetch()
        except UpstreamRefused as error:
            if not self.first.done():
                self.first.set_exception(error)
                return None
            if await self._commit_end(error.code, error.message):
                return None
            return time.monotonic() + interval
        except UpstreamError as error:
            if not self.first.done():
                self.first.set_exception(error)
                return None
            if self._failing_since is None:
                self._failing_since = started
                # Logged when a run starts failing and when it recovers, not per poll.
                log.warning("polls of run %s are failing: %s", self.key.run_id, error.code)
            now = time.monotonic()
            if now - self._failing_since >= settings.upstream_give_up:
                message = (
                    f"The bridge gave up on the upstream API after "
                    f"{settings.upstream_give_up:g} seconds of failures."
                )
                if await self._commit_end("upstream_unavailable", message):
                    return None
                return now + interval
            next_poll = now + self._backoff.next_delay(error.retry_after)
            # One last try exactly when the give-up time comes, not a backoff later.
            self._next_poll = min(next_poll, self._failing_since + settings.upstream_give_up)
            return min(self._next_poll, now + interval)
        if self._failing_since is not None:
            log.info("polls of run %s recovered", self.key.run_id)
            self._failing_since = None
            self._backoff.reset()
        await self._commit_status(status)
        if self.channel.history.terminal:
            self._resolve_first()
            return None
        if self._fresh and self.channel.history.latest is not None:
            self._resolve_first()
        if not self.leader:
            return time.monotonic() + interval
        next_poll = (self._next_poll or started) + interval
        now = time.monotonic()
        if next_poll <= now:
            # A slow poll skips the ticks it overran instead of bunching up.
            next_poll += interval * (1 + int((now - next_poll) // interval))
        self._next_poll = next_poll
        return next_poll

    # --- writing and copying the history ------------------------------------------------

    async def _commit_status(self, status: dict[str, Any]) -> None:
        """Commit a polled status: an event if it changed, else just "still polled"."""
        for _ in range(2):
            history = self.channel.history
            if history.terminal:
                return
            latest = history.latest
            if latest is not None and latest.status == status:
                if await self._commit("", "", status):
                    return
            else:
                name = self._registry.classifier.event_for(status)
                kind = TERMINAL if is_terminal(name) else PROGRESS
                if await self._commit(name, kind, status):
                    return
            if not self.leader or self._diverged:
                return

    async def _commit_end(self, code: str, message: str) -> bool:
        """End the run's history with the bridge's own error; True once it is ended."""
        for _ in range(2):
            if self.channel.history.terminal:
                return True
            status = {"status": code, "errorMessage": message}
            if await self._commit(sse.ERROR, SYNTHETIC, status):
                return True
            if not self.leader or self._diverged:
                return False
        return self.channel.history.terminal

    async def _commit(self, name: str, kind: str, status: dict[str, Any]) -> bool:
        """One commit on top of the local copy; False (after catching up) if refused."""
        history = self.channel.history
        data = sse.encode_json(status) if name else ""
        result = await self._ctx.store.commit(
            self.key, self.token, history.epoch, history.last_seq, name, kind, data
        )
        if result.code == WRITTEN:
            self._fresh = True
            if name:
                self.channel.mirror(
                    result.epoch, result.seq, name, status, data, synthetic=kind == SYNTHETIC
                )
                metrics = self._registry.metrics
                if metrics is not None:
                    metrics.events_published.labels(name).inc()
            return True
        if result.code == NOT_HOLDER:
            self._lose_lead()
            return False
        # Out of date or ended: another leader wrote, or Redis lost the history.
        await self._tick()
        return False

    async def _tick(self) -> None:
        """Refresh interest and lease; bring the local copy and Redis's history in step."""
        store = self._ctx.store
        view = await store.tick(self.key, self.token, active=self._active())
        self.leader = view.holder == self.token
        self._others = view.others
        self._since_poll = view.since_poll
        history = self.channel.history
        if view.epoch is None:
            # Redis has no history (restarted empty, or expired): put ours back.
            self._fresh = False
            await self._restore()
            return
        if history.last_seq == 0:
            if view.end == SYNTHETIC:
                # Ended by a bridge (refused, gave up): a new history is to come.
                self._fresh = False
                return
            await self._load(view.epoch, view.seq)
        elif history.epoch == view.epoch:
            if view.seq > history.last_seq:
                await self._load(view.epoch, view.seq - history.last_seq)
            elif view.seq < history.last_seq:
                await self._restore()
        else:
            self._diverged = True
            return
        self._fresh = view.fresh

    async def _load(self, epoch: int, count: int) -> None:
        """Copy the records this replica lacks (``count`` of them, or more by now)."""
        for record in await self._ctx.store.records(self.key, count):
            if record.epoch == epoch and record.seq > self.channel.history.last_seq:
                self._apply(record)

    async def _restore(self) -> None:
        history = self.channel.history
        latest = history.latest
        if latest is None or history.terminal:
            return
        record = Record(history.epoch, latest.seq, latest.name, PROGRESS, latest.data)
        await self._ctx.store.restore(self.key, record)

    def _apply(self, record: Record) -> bool:
        try:
            status = json.loads(record.data)
        except ValueError:
            return False
        if not isinstance(status, dict):
            return False
        event = self.channel.mirror(
            record.epoch,
            record.seq,
            record.name,
            status,
            record.data,
            synthetic=record.synthetic,
        )
        return event is not None

    def on_message(self, payload: bytes) -> None:
        """A pub/sub message for this key (called by the listener, in order)."""
        if payload == b"!":
            # A new leader confirmed the history: a waiting first viewer can have it.
            if not self.first.done():
                self._nudge()
            return
        record = Record.decode(payload)
        if record is None:
            return
        history = self.channel.history
        if (
            history.last_seq == 0
            or record.epoch != history.epoch
            or record.seq != history.last_seq + 1
        ):
            # Not the next one: the tick loads from Redis what is missing (or notices
            # the history changed). An empty copy loads all of it, for resumes.
            if record.epoch != history.epoch or record.seq > history.last_seq:
                self._nudge()
            return
        if not self._apply(record):
            return
        # Only a lease holder that just polled publishes: the copy is up to date.
        self._fresh = True
        self._resolve_first()
        if history.terminal:
            self._nudge()

    # --- small parts ------------------------------------------------------------------

    def _nudge(self) -> None:
        self._tick_now = True
        self._wake.set()

    def _resolve_first(self) -> None:
        if not self.first.done():
            self.first.set_result(None)

    def _lose_lead(self) -> None:
        self.leader = False
        self._next_poll = None
        self._failing_since = None
        self._backoff.reset()

    def _active(self) -> bool:
        """Viewers here, or the linger after the last one left."""
        if self.leases > 0:
            return True
        linger = self._ctx.settings.linger
        return self._idle_since is not None and time.monotonic() < self._idle_since + linger

    def _idle_done(self, now: float) -> bool:
        """Time to stop: no viewer here for a linger, and none elsewhere if we lead."""
        if self.leases > 0 or self._idle_since is None:
            return False
        if now < self._idle_since + self._ctx.settings.linger:
            return False
        return not (self.leader and self._others > 0)

    async def _wait(self, until: float) -> bool:
        """Sleep until ``until``, a nudge or a change of viewers; False: stop."""
        linger = self._ctx.settings.linger
        while True:
            if self._tick_now:
                self._tick_now = False
                return True
            now = time.monotonic()
            if self._idle_done(now):
                return False
            if now >= until:
                return True
            wake_at = until
            if self.leases == 0 and self._idle_since is not None:
                idle_end = self._idle_since + linger
                if idle_end > now:
                    wake_at = min(wake_at, idle_end)
            self._wake.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(wake_at - now):
                    await self._wake.wait()


class ClusterRegistry(PollerRegistry):
    """The replica's pollers, leading or following through Redis."""

    def __init__(
        self,
        settings: Settings,
        upstream: UpstreamClient,
        hub: Hub,
        metrics: Metrics | None,
        ctx: ClusterContext,
    ) -> None:
        super().__init__(settings, upstream, hub, metrics)
        self.ctx = ctx
        self._replica = os.urandom(6).hex()
        self._serial = itertools.count(1)

    def new_token(self) -> str:
        """A poller's own lease token: this replica, this poller."""
        return f"{self._replica}-{next(self._serial)}"

    def key(self, run_id: str, headers: Mapping[str, str]) -> ChannelKey:
        # The digest key is the cluster's (from Redis), so that replicas agree on keys.
        secret = self.ctx.link.secret
        if secret is None:
            raise ClusterUnavailable(UNAVAILABLE)
        return ChannelKey(run_id, credentials_digest(secret, headers))

    def _start_poller(self, key: ChannelKey, headers: Mapping[str, str]) -> Poller:
        if not self.ctx.link.up:
            raise ClusterUnavailable(UNAVAILABLE)
        return ClusterPoller(self, key, headers, self.hub.open(key))

    def deliver(self, message: bytes) -> None:
        """A message of the events channel: to this replica's poller of its key, if any."""
        name, _, payload = message.partition(b"\n")
        key = parse_channel_name(name.decode("ascii", "replace"))
        poller = self._pollers.get(key) if key is not None else None
        if isinstance(poller, ClusterPoller):
            poller.on_message(payload)

    @property
    def leading(self) -> int:
        return sum(1 for p in self._pollers.values() if isinstance(p, ClusterPoller) and p.leader)

    async def close(self) -> None:
        """Stop every poller, then give up their leases at once (others take over now)."""
        pollers = [p for p in self._pollers.values() if isinstance(p, ClusterPoller)]
        for poller in pollers:
            poller.resigned = True
        await super().close()
        await self.ctx.resign([(p.key, p.token) for p in pollers])
