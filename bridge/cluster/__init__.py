"""Cluster mode (``BRIDGE_REDIS_URL``): replicas share pollers and history through Redis.

    link.py    the replica's Redis connection: command pool, one pub/sub listener, health
    store.py   what is kept in Redis per channel key, and the Lua scripts that change it
    ledger.py  a poller's ledger: lead (commit, publish) or follow (copy)

``RedisBackend`` is the ``LedgerBackend`` (bridge/polling/ledger.py) of cluster mode. The poll
loop, the hub, the streams and resume are the one-process ones: each replica keeps a
local channel per watched run whose history carries the leader's ids. See docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os

from bridge.cluster.ledger import RedisLedger
from bridge.cluster.link import REDIS_FAILURES, RedisLink
from bridge.cluster.store import Store, parse_channel_name
from bridge.errors import ClusterUnavailable
from bridge.events.channel import Channel, ChannelKey
from bridge.ops.metrics import ClusterMetrics, Metrics
from bridge.polling.ledger import Ledger, LedgerBackend, LedgerOwner
from bridge.polling.status import Reading, StatusReader
from bridge.settings import Settings

__all__ = ["RedisBackend"]


#: The name of a poke message on the pokes channel (never a channel key: those hold a
#: ':' and start with a digest).
POKE = "!poke"


def lease_seconds(settings: Settings) -> float:
    """How long a leader's lease outlives its last renewal: a few polls, one slow request."""
    return 3 * settings.poll_interval + settings.upstream_timeout + settings.redis_timeout


class RedisBackend(LedgerBackend):
    """The link, the store, and this replica's ledgers (one per poller)."""

    keeps_ended_runs = True
    shared = True

    def __init__(self, settings: Settings, metrics: Metrics, reader: StatusReader) -> None:
        self._settings = settings
        self._metrics = metrics
        self._reader = reader
        self.link = RedisLink(settings, self._deliver)
        lease_ms = int(lease_seconds(settings) * 1000)
        self.store = Store(
            self.link.client,
            settings.redis_prefix,
            lease_ms=lease_ms,
            # The history outlives its last poll by BRIDGE_HISTORY_TTL (and a lease).
            keep_ms=max(int(settings.history_ttl * 1000), lease_ms),
            history_size=settings.history_size,
            history_max_bytes=settings.history_max_bytes,
        )
        self._ledgers: dict[ChannelKey, RedisLedger] = {}
        self._held: list[RedisLedger] | None = None
        self._replica = os.urandom(6).hex()
        self._serial = itertools.count(1)
        self._cluster_metrics = ClusterMetrics(
            metrics.registry,
            connected=lambda: 1.0 if self.link.up else 0.0,
            leading=lambda: float(self.leading),
            subscriptions=lambda: float(len(self.link.following)),
        )

    @property
    def leading(self) -> int:
        return sum(1 for ledger in self._ledgers.values() if ledger.leads)

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        """After the pollers stopped (they give their leases up through the link)."""
        await self.link.close()

    def digest_secret(self) -> bytes:
        # The cluster's key (from Redis), so that replicas agree on channel keys.
        secret = self.link.secret
        if secret is None:
            raise ClusterUnavailable()
        return secret

    def open(self, key: ChannelKey, channel: Channel, owner: LedgerOwner) -> Ledger:
        if not self.link.up:
            raise ClusterUnavailable()
        ledger = RedisLedger(
            channel,
            owner,
            self._metrics,
            link=self.link,
            store=self.store,
            # A poller's own lease token: this replica, this poller.
            token=f"{self._replica}-{next(self._serial)}",
            read=self._read,
            on_close=self._closed,
            step_aside_s=max(10 * self._settings.poll_interval, lease_seconds(self._settings)),
        )
        self._ledgers[key] = ledger
        return ledger

    def health(self) -> tuple[bool, dict[str, str]]:
        up = self.link.up
        return up, {"redis": "connected" if up else "unavailable"}

    def hold_resignations(self) -> None:
        self._held = []

    async def resign_held(self) -> None:
        held, self._held = self._held or [], None
        await self._resign(held)

    async def _closed(self, ledger: RedisLedger) -> None:
        if self._ledgers.get(ledger.key) is ledger:
            del self._ledgers[ledger.key]
            self.link.unfollow(ledger.live_channel)
        if self._held is not None:
            self._held.append(ledger)
            return
        await self._resign([ledger])

    async def _resign(self, ledgers: list[RedisLedger]) -> None:
        """Give up these ledgers' leases and interests now (bounded; Redis may be gone)."""
        if not ledgers or not self.link.up:
            return  # the leases expire by themselves
        try:
            async with asyncio.timeout(self._settings.redis_timeout):
                await self.store.resign([ledger.resignation() for ledger in ledgers])
        except REDIS_FAILURES as error:
            self.link.trouble(error)

    def _read(self, data: str) -> Reading | None:
        """A status another replica committed, read as this one reads its own."""
        try:
            status = json.loads(data)
        except ValueError:
            return None
        return self._reader.read(status, data) if isinstance(status, dict) else None

    async def relay_poke(self, run_id: str) -> bool:
        """Publish the poke: every replica pokes its pollers of the run; the leader polls."""
        if not self.link.up:
            raise ClusterUnavailable()
        try:
            async with asyncio.timeout(self._settings.redis_timeout):
                await self.link.client.publish(self.link.pokes_channel, f"{POKE}\n{run_id}")
        except REDIS_FAILURES as error:
            self.link.trouble(error)
            raise ClusterUnavailable() from None
        return True

    def _deliver(self, message: bytes) -> None:
        """A pub/sub message: to this replica's ledger of its key, if any; or a poke."""
        self._cluster_metrics.received(len(message))
        name, _, payload = message.partition(b"\n")
        if name == POKE.encode():
            run_id = payload.decode("ascii", "replace")
            for leading in list(self._ledgers.values()):
                if leading.key.run_id == run_id and leading.leads:
                    leading.owner.poke()
            return
        key = parse_channel_name(name.decode("ascii", "replace"))
        ledger = self._ledgers.get(key) if key is not None else None
        if ledger is not None:
            ledger.on_message(payload)
