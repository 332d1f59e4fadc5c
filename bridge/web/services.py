"""The services one app shares, built once from Settings, started and stopped together.

This is the app's composition root, so it sits in web/ beside the app it assembles: it
builds everything below web/ and web's own services (forward auth, readiness), and only
the app's wiring (bridge/web/app.py) holds the whole ``Services``: it hands each consumer
the parts it uses (the opening gets an ``Opener``, the front and routes their settings,
metrics and ticker). Nothing here reads a request.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from functools import partial

from bridge.events import sse
from bridge.events.channel import Subscription
from bridge.events.feed import FeedHistory
from bridge.events.history import RunHistory
from bridge.events.hub import Hub
from bridge.ops.gc_tuning import GcTuner
from bridge.ops.loop_lag import LoopLag
from bridge.ops.metrics import Metrics
from bridge.polling.feed import FeedPoller, FeedSource
from bridge.polling.fleet import Fleets
from bridge.polling.ledger import LedgerBackend, MemoryBackend
from bridge.polling.poller import Cadence, Poller
from bridge.polling.registry import PollerRegistry
from bridge.polling.status import StatusReader, status_reader
from bridge.polling.upstream import Page, UpstreamClient, Validators
from bridge.settings import Settings
from bridge.streams.feed import FeedReach
from bridge.streams.fleet import EVERY_RUN, FleetOpener
from bridge.streams.keepalive import StreamLimits, spread
from bridge.streams.limits import StreamLimiter
from bridge.streams.opening import Opener
from bridge.streams.ticker import Ticker
from bridge.streams.viewer import Viewer
from bridge.tasks import cancel_and_wait
from bridge.web.auth import ForwardAuth, shared_key_warning
from bridge.web.auth import log as auth_log
from bridge.web.readiness import Readiness

#: URL schemes of cluster mode (BRIDGE_REDIS_URL).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def create_backend(settings: Settings, metrics: Metrics, reader: StatusReader) -> LedgerBackend:
    """The ledger backend BRIDGE_REDIS_URL's scheme names (unset: one process)."""
    url = settings.redis_url or ("redis://" if settings.redis_sentinels else None)
    scheme = (url or "memory://").split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryBackend(metrics)
    if scheme in REDIS_SCHEMES:
        from bridge.cluster import RedisBackend  # only cluster mode needs redis-py loaded

        return RedisBackend(settings, metrics, reader)
    raise ValueError(f"no ledger backend for the scheme {scheme!r}")


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.upstream = UpstreamClient(settings, self.metrics)
        self.reader = status_reader(settings)
        self.backend = create_backend(settings, self.metrics, self.reader)
        #: BRIDGE_FEED_PATH: runs are polled as event feeds (bridge/polling/feed.py).
        self.feed = FeedSource(settings) if settings.feed_path is not None else None
        self.hub = Hub(
            history_size=settings.history_size,
            history_max_bytes=settings.history_max_bytes,
            history_runs=settings.history_runs,
            # Where the backend keeps ended runs (Redis), nothing is kept here.
            history_ttl=0 if self.backend.keeps_ended_runs else settings.history_ttl,
            history=(partial(FeedHistory, start=settings.feed_start) if self.feed else RunHistory),
            vocabulary=settings.vocabulary,
        )
        self.pollers = PollerRegistry(
            self.hub,
            self.backend,
            cadence=Cadence.of(settings),
            fetch=self.upstream.fetch,
            reader=self.reader,
            metrics=self.metrics,
            make=(
                partial(FeedPoller, source=self.feed, pages=self.fetch_page)
                if self.feed
                else Poller
            ),
        )
        #: BRIDGE_UPSTREAM_LIST_PATH: one list request per scope feeds every listed run.
        self.fleets = (
            Fleets(
                settings,
                self.pollers,
                self.reader,
                self.fetch_page,
                self.metrics.registry,
                self.backend,
            )
            if settings.upstream_list_path is not None
            else None
        )
        # The intervals in force, by state group (fixed words: the configured keys).
        self.metrics.poll_interval.labels("default").set(settings.poll_interval)
        for state, seconds in settings.poll_intervals.items():
            self.metrics.poll_interval.labels(state).set(seconds)
        self.limiter = StreamLimiter(settings.max_streams, settings.max_streams_per_client)
        self.ticker = Ticker(settings.ping_interval, settings.send_timeout)
        self.metrics.track(
            pollers=lambda: self.pollers.active,
            fast_path=lambda: self.ticker.viewers,
            channels=lambda: self.hub.live_count,
        )
        # Every stall of the loop, whatever its cause (bridge/ops/loop_lag.py).
        self.loop_lag = LoopLag(self.metrics.registry)
        self.gc: GcTuner | None = None
        if settings.gc_freeze_interval > 0:
            self.gc = GcTuner(
                settings.gc_freeze_interval,
                settings.gc_full_interval,
                settings.gc_full_growth,
                self.metrics.registry,
                streams=lambda: self.limiter.open,
            )
        self.auth = ForwardAuth(settings) if settings.auth_url is not None else None
        self.readiness = Readiness(settings, self.upstream, self.backend.health)
        self.opener = Opener(
            limiter=self.limiter,
            admit=self.upstream_headers,
            pollers=self.pollers,
            hub=self.hub,
            limits=self.limits,
            open_streams=self.metrics.open_streams,
            follow=self.follow_list if self.fleets is not None else None,
            feed=(
                FeedReach(self.feed, self.fetch_page, self.polled_with)
                if self.feed is not None
                else None
            ),
        )
        #: ``GET /v1/events`` (bridge/streams/fleet.py), when the bridge follows a list.
        self.open_fleet = (
            FleetOpener(
                limiter=self.limiter,
                admit=self.admit_every_run,
                fleets=self.fleets,
                headers=self.polled_with,
                digest_secret=self.backend.digest_secret,
                limits=self.limits,
                open_streams=self.metrics.open_streams,
            )
            if self.fleets is not None
            else None
        )
        self._spreading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        warning = shared_key_warning(self.settings)
        if warning is not None:
            auth_log.warning(warning)
        await self.upstream.start()
        await self.backend.start()
        if self.auth is not None:
            await self.auth.start()
        self.ticker.start()
        self.loop_lag.start()
        if self.gc is not None:
            self.gc.start()

    async def stop(self) -> None:
        self.drain()
        if self._spreading is not None:
            await cancel_and_wait(self._spreading)
        await self.ticker.stop()
        await self.loop_lag.stop()
        if self.gc is not None:
            await self.gc.stop()
        if self.fleets is not None:
            await self.fleets.close()
        await self.pollers.close()
        await self.backend.close()
        if self.auth is not None:
            await self.auth.close()
        await self.upstream.close()

    @property
    def draining(self) -> bool:
        return self.limiter.draining

    def drain(self) -> None:
        """Refuse new streams, and end the open ones over BRIDGE_DRAIN_SPREAD.

        Each stream ends at its own random moment in the window, with a jittered
        ``retry:`` first, so its viewer reconnects (to another replica) and resumes by
        Last-Event-ID: ten thousand viewers do not all come back within the same second.
        """
        if self.draining:
            return
        self.limiter.drain()
        if self.fleets is not None:
            self.fleets.drain(self._farewell)
        subscriptions = [s for c in self.hub.live_channels() for s in c.subscriptions]
        window = self.settings.drain_window
        if window <= 0 or not subscriptions:
            for subscription in subscriptions:
                subscription.close(self._farewell())
            return
        self._spreading = asyncio.create_task(
            self._close_spread(subscriptions, window), name="bridge:drain-spread"
        )

    async def _close_spread(self, subscriptions: list[Subscription], window: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        moments = sorted((random.uniform(0, window), i) for i in range(len(subscriptions)))
        try:
            for moment, i in moments:
                delay = started + moment - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                subscriptions[i].close(self._farewell())
        finally:
            # Whatever is left (the grace ran out, the app stops) ends now.
            for subscription in subscriptions:
                subscription.close(self._farewell())

    def _farewell(self) -> bytes:
        return sse.retry(self.limits().retry_ms)

    def limits(self) -> StreamLimits:
        s = self.settings
        return StreamLimits(
            s.ping_interval, s.stream_timeout, s.viewer_buffer, spread(s.retry_ms), s.vocabulary
        )

    async def admit_every_run(self, credentials: dict[str, str]) -> None:
        """Forward-auth mode: the auth service admits a stream of every run (run ``*``)."""
        if self.auth is not None:
            await self.auth.admit(EVERY_RUN, credentials)

    async def follow_list(self, headers: Mapping[str, str]) -> Callable[[], None] | None:
        """Lease the list poller of these headers' scope (its release; None: none)."""
        assert self.fleets is not None
        fleet = await self.fleets.follow(headers, self.backend.digest_secret())
        return fleet.release if fleet is not None else None

    async def fetch_page(
        self, url: str, headers: Mapping[str, str], validators: Validators | None = None
    ) -> Page:
        """One feed or list page (any JSON) from the upstream."""
        return await self.upstream.fetch_page(url, headers, validators, any_json=True)

    def polled_with(self, viewer: Viewer) -> dict[str, str]:
        """The headers a viewer's own requests go upstream with, once it is admitted."""
        return dict(viewer.credentials) if self.auth is None else {}

    async def upstream_headers(self, run_id: str, viewer: dict[str, str]) -> dict[str, str]:
        """The headers ``viewer`` polls ``run_id`` with (after admission).

        Viewer mode: the viewer's own allow-listed headers, so a viewer shares a poller
        only with viewers presenting the same credentials. Forward-auth mode: the auth
        service admits the viewer (or raises), then only the bridge's own headers are used
        (BRIDGE_UPSTREAM_HEADERS, which the upstream client sends with every request).
        """
        if self.auth is None:
            return viewer
        await self.auth.admit(run_id, viewer)
        return {}
