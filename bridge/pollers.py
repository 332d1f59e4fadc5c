"""One poller per (run, credentials): the only thing that asks the upstream.

The first viewer starts it, every later viewer of the same run with the same forwarded
credentials shares it, and it stops a short linger after the last viewer left, or at a
terminal state. Polls run on a fixed cadence (tick k at start + k * interval, missed
ticks skipped, never two at once). Concurrent cold connects wait on the same first
request (single-flight); a viewer joining a running poller is answered from memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

from bridge import sse
from bridge.errors import UpstreamError, UpstreamRefused
from bridge.hub import Channel, ChannelKey, Hub
from bridge.metrics import Metrics
from bridge.resilience import Backoff
from bridge.settings import Settings
from bridge.status import Classifier, is_terminal
from bridge.tasks import cancel_and_wait
from bridge.upstream import UpstreamClient

log = logging.getLogger("bridge.pollers")


def credentials_digest(secret: bytes, headers: Mapping[str, str]) -> str:
    """The keyed digest that tells viewers' credentials apart (never the credentials)."""
    material = "\n".join(f"{k}:{v}" for k, v in sorted(headers.items()))
    digest = hmac.new(secret, material.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:32]


class Poller:
    def __init__(
        self,
        registry: PollerRegistry,
        key: ChannelKey,
        headers: Mapping[str, str],
        channel: Channel,
    ) -> None:
        self.key = key
        self.channel = channel
        self._registry = registry
        self._headers = dict(headers)
        self.leases = 0
        self._idle_since: float | None = None
        self._wake = asyncio.Event()
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.polls = 0
        self.task = asyncio.create_task(self._run(), name=f"poller:{key.run_id}")

    # --- viewers ---------------------------------------------------------------

    def acquire(self) -> None:
        self.leases += 1
        self._idle_since = None

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._idle_since = time.monotonic()
            self._wake.set()

    # --- the loop --------------------------------------------------------------

    async def _run(self) -> None:
        settings = self._registry.settings
        interval = settings.poll_interval
        try:
            try:
                status = await self._fetch()
            except UpstreamError as error:
                self.first.set_exception(error)
                return
            if self._publish_if_changed(status):
                self.first.set_result(None)
                return
            self.first.set_result(None)
            await self._poll_forever(interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("poller for run %s failed", self.key.run_id)
        finally:
            self._finish()

    def _finish(self) -> None:
        """However the loop ended: answer viewers still waiting, and leave the registry."""
        if not self.first.done():
            self.first.set_exception(UpstreamError("The bridge stopped polling this run."))
        # Retrieve it so asyncio never reports "exception was never retrieved".
        if not self.first.cancelled():
            self.first.exception()
        self._registry._forget(self)

    async def _poll_forever(self, interval: float) -> None:
        """Poll on a fixed cadence until terminal, refused, given up, or idle."""
        settings = self._registry.settings
        backoff = Backoff(interval, max(settings.backoff_max, interval))
        failing_since: float | None = None
        next_poll = time.monotonic() + interval
        while True:
            if not await self._sleep_until(next_poll):
                return
            started = time.monotonic()
            try:
                status = await self._fetch()
            except UpstreamRefused as error:
                self._end_with_error(error.code, error.message)
                return
            except UpstreamError as error:
                if failing_since is None:
                    failing_since = started
                    # Logged when a run starts failing and when it recovers, not per poll.
                    log.warning("polls of run %s are failing: %s", self.key.run_id, error.code)
                if time.monotonic() - failing_since >= settings.upstream_give_up:
                    self._end_with_error(
                        "upstream_unavailable",
                        f"The bridge gave up on the upstream API after "
                        f"{settings.upstream_give_up:g} seconds of failures.",
                    )
                    return
                next_poll = time.monotonic() + backoff.next_delay(error.retry_after)
                # One last try exactly when the give-up time comes, not a backoff later.
                next_poll = min(next_poll, failing_since + settings.upstream_give_up)
                continue
            if failing_since is not None:
                log.info("polls of run %s recovered", self.key.run_id)
                failing_since = None
                backoff.reset()
                next_poll = time.monotonic()
            if self._publish_if_changed(status):
                return
            next_poll += interval
            now = time.monotonic()
            if next_poll <= now:
                # A slow poll skips the ticks it overran instead of bunching up.
                next_poll += interval * (1 + int((now - next_poll) // interval))

    async def _fetch(self) -> dict[str, Any]:
        self.polls += 1
        return await self._registry.upstream.fetch_status(self.key.run_id, self._headers)

    def _publish_if_changed(self, status: dict[str, Any]) -> bool:
        """Publish a changed status; True when it was terminal (the poller is done)."""
        latest = self.channel.history.latest
        if latest is not None and latest.status == status:
            return False
        if self.channel.history.terminal:
            return True
        name = self._registry.classifier.event_for(status)
        self._publish(name, status)
        return is_terminal(name)

    def _end_with_error(self, code: str, message: str) -> None:
        if not self.channel.history.terminal:
            self._publish(sse.ERROR, {"status": code, "errorMessage": message}, synthetic=True)

    def _publish(self, name: str, status: dict[str, Any], *, synthetic: bool = False) -> None:
        self.channel.publish(name, status, synthetic=synthetic)
        metrics = self._registry.metrics
        if metrics is not None:
            metrics.events_published.labels(name).inc()

    async def _sleep_until(self, deadline: float) -> bool:
        """Wait for the next tick; False when the poller should stop instead."""
        linger = self._registry.settings.linger
        while True:
            now = time.monotonic()
            if self.leases == 0 and self._idle_since is not None:
                if now >= self._idle_since + linger:
                    return False
                wake_at = min(deadline, self._idle_since + linger)
            else:
                wake_at = deadline
            if now >= deadline:
                return True
            self._wake.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(wake_at - now):
                    await self._wake.wait()


class PollerRegistry:
    def __init__(
        self,
        settings: Settings,
        upstream: UpstreamClient,
        hub: Hub,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.upstream = upstream
        self.hub = hub
        self.classifier = Classifier(
            settings.status_field,
            frozenset(settings.success_statuses),
            frozenset(settings.failure_statuses),
        )
        self._pollers: dict[ChannelKey, Poller] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._secret = os.urandom(32)

    def key(self, run_id: str, headers: Mapping[str, str]) -> ChannelKey:
        return ChannelKey(run_id, credentials_digest(self._secret, headers))

    def _start_poller(self, key: ChannelKey, headers: Mapping[str, str]) -> Poller:
        """A new poller for ``key`` (cluster mode starts one that leads or follows)."""
        return Poller(self, key, headers, self.hub.open(key))

    @asynccontextmanager
    async def lease(self, run_id: str, headers: Mapping[str, str]) -> AsyncIterator[Channel]:
        """The run's channel with its first status, kept fresh while the lease is held.

        Raises UpstreamError when the first status cannot be fetched with these headers.
        """
        key = self.key(run_id, headers)
        cached = self.hub.find(key)
        if cached is not None and cached.history.terminal and key not in self._pollers:
            # Ended runs are answered from history: no upstream request.
            yield cached
            return
        poller = self._pollers.get(key)
        if poller is None:
            poller = self._start_poller(key, headers)
            self._pollers[key] = poller
            self._tasks.add(poller.task)
            poller.task.add_done_callback(self._tasks.discard)
        poller.acquire()
        try:
            await asyncio.shield(poller.first)
            yield poller.channel
        finally:
            poller.release()

    def _forget(self, poller: Poller) -> None:
        if self._pollers.get(poller.key) is poller:
            del self._pollers[poller.key]
            self.hub.retire(poller.key)

    @property
    def active(self) -> int:
        return len(self._pollers)

    def poller(self, run_id: str, headers: Mapping[str, str]) -> Poller | None:
        return self._pollers.get(self.key(run_id, headers))

    async def close(self) -> None:
        """Stop every poller and wait for each (they own no viewers after shutdown)."""
        for task in list(self._tasks):
            await cancel_and_wait(task)
