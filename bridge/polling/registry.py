"""The process's pollers: one per (run, credentials digest), shared by every viewer of it.

``lease()`` is how anything gets a run's channel: it starts the poller on first use,
waits for its first status (concurrent cold connects share that one request), keeps the
poller alive until the lease is released, and answers an ended run from the hub's
history without asking the upstream. The registry owns every poller's task and awaits
each one in ``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bridge.credentials import credentials_digest
from bridge.events.channel import Channel, ChannelKey
from bridge.events.hub import Hub
from bridge.ops.metrics import Metrics
from bridge.polling.ledger import LedgerBackend
from bridge.polling.poller import Cadence, Fetch, Poller, Wakeup
from bridge.polling.status import StatusReader
from bridge.tasks import cancel_and_wait


@dataclass(frozen=True, slots=True)
class Poked:
    """What became of a poke."""

    #: Pollers that will poll now, and pollers that already had a poke pending.
    poked: int = 0
    coalesced: int = 0
    #: Sent through Redis to whichever replica leads the run (cluster mode).
    relayed: bool = False

    @property
    def outcome(self) -> str:
        """A fixed word for the answer and the metric label."""
        if self.relayed:
            return "relayed"
        if self.poked:
            return "polled"
        return "coalesced" if self.coalesced else "unwatched"

    @property
    def pollers(self) -> int | None:
        """Pollers of the run in this process (None: not known here, cluster mode)."""
        return None if self.relayed else self.poked + self.coalesced


class PollerRegistry:
    def __init__(
        self,
        hub: Hub,
        backend: LedgerBackend,
        *,
        cadence: Cadence,
        fetch: Fetch,
        reader: StatusReader,
        metrics: Metrics | None = None,
        make: Callable[..., Poller] = Poller,
    ) -> None:
        #: Makes a poller, called as ``Poller`` is (a feed's poller in feed mode).
        self._make = make
        self.hub = hub
        self._backend = backend
        self._cadence = cadence
        self._fetch = fetch
        self._reader = reader
        self._metrics = metrics
        self._pollers: dict[ChannelKey, Poller] = {}
        #: Live channel keys by run id, so that a poke finds every credential scope.
        self._by_run: dict[str, set[ChannelKey]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def key(self, run_id: str, headers: Mapping[str, str]) -> ChannelKey:
        return ChannelKey(run_id, credentials_digest(self._backend.digest_secret(), headers))

    async def lease(
        self, run_id: str, headers: Mapping[str, str]
    ) -> tuple[Channel, Callable[[], None]]:
        """The run's channel with its first status, kept fresh until the returned
        ``release`` is called (once).

        Not a context manager: a stream held open after its opening keeps the bound
        method to call later, which costs less per viewer than a suspended context
        manager. Raises UpstreamError when the first status cannot be fetched with these
        headers, ClusterUnavailable when cluster mode cannot reach Redis.
        """
        key = self.key(run_id, headers)
        cached = self.hub.find(key)
        if cached is not None and cached.history.terminal and key not in self._pollers:
            # Ended runs are answered from history: no upstream request.
            return cached, _nothing_held
        poller = self._pollers.get(key) or self._start(key, headers)
        poller.acquire()
        try:
            await asyncio.shield(poller.first)
        except BaseException:
            poller.release()
            raise
        return poller.channel, poller.release

    def start_with(
        self, run_id: str, headers: Mapping[str, str], make: Callable[..., Poller]
    ) -> Poller:
        """The poller of (run, headers), made by ``make`` if there is none yet: a poller
        fed by something else than its own requests (a list of runs), which later viewers
        of the run lease like any other."""
        key = self.key(run_id, headers)
        return self._pollers.get(key) or self._start(key, headers, make)

    def _start(
        self, key: ChannelKey, headers: Mapping[str, str], make: Callable[..., Poller] | None = None
    ) -> Poller:
        channel = self.hub.open(key)
        wakeup = Wakeup()
        try:
            ledger = self._backend.open(key, channel, wakeup)
        except BaseException:
            self.hub.retire(key)
            raise
        poller = (make or self._make)(
            key,
            headers,
            ledger,
            wakeup,
            cadence=self._cadence,
            fetch=self._fetch,
            reader=self._reader,
            on_stop=self._stopped,
            metrics=self._metrics,
        )
        self._pollers[key] = poller
        self._by_run.setdefault(key.run_id, set()).add(key)
        task = poller.start()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return poller

    def _stopped(self, poller: Poller) -> None:
        if self._pollers.get(poller.key) is poller:
            del self._pollers[poller.key]
            scopes = self._by_run.get(poller.key.run_id)
            if scopes is not None:
                scopes.discard(poller.key)
                if not scopes:
                    del self._by_run[poller.key.run_id]
            self.hub.retire(poller.key)

    async def poke(self, run_id: str) -> Poked:
        """Poll ``run_id`` now, in every credential scope watched here.

        A run nobody watches costs nothing. In cluster mode the poke goes through Redis
        to every replica, and whichever leads the run polls it.
        """
        if await self._backend.relay_poke(run_id):
            return Poked(relayed=True)
        poked = coalesced = 0
        for key in list(self._by_run.get(run_id, ())):
            poller = self._pollers.get(key)
            if poller is None:
                continue
            if poller.poke():
                poked += 1
            else:
                coalesced += 1
        return Poked(poked=poked, coalesced=coalesced)

    @property
    def active(self) -> int:
        return len(self._pollers)

    async def close(self) -> None:
        """Stop every poller and wait for each; their leases are given up in one go."""
        self._backend.hold_resignations()
        try:
            for task in list(self._tasks):
                await cancel_and_wait(task)
        finally:
            await self._backend.resign_held()


def _nothing_held() -> None:
    """The release of a lease on an ended run: no poller was kept alive for it."""
