"""The seam between the poll loop and where a run's history lives.

The poll loop (bridge/polling/poller.py) decides *when* the upstream is asked; a ``Ledger``
decides what an answer *becomes*. The whole seam is the three classes below:

    LedgerBackend   one per process, chosen by BRIDGE_REDIS_URL's scheme (bridge/web/services.py):
                    memory (no URL): this module's MemoryBackend, one process;
                    redis, rediss, unix: bridge/cluster/, replicas share through Redis.
      .start() / .close()           the backend's own connections
      .digest_secret()              the key of the credentials digest (shared by replicas)
      .open(key, channel, owner)    a Ledger for one poller
      .health()                     what /readyz adds about the backend
      .relay_poke(run_id)           carry a poke to the replica that polls the run
      .hold_resignations() / .resign_held()
                                    shutdown: give every lease up in one go, not one by one

    Ledger          one per poller (per run and credentials)
      .sync(active)                 before each step: learn what others did (False: stop)
      .record(observation)          a polled status: an event if it changed
      .still()                      a poll the upstream answered 304 Not Modified
      .end(code, message)           the bridge's own terminal error (refused, gave up)
      .append(items, reading)       events the upstream numbered itself (a feed's items)
      .conclude(page, reading, id)  a feed's end event (its data: the last page)
      .step_aside()                 this replica cannot reach the upstream: let another lead
      .close(in_flight)             the poller stopped (and when its last poll started)
      .leads / .fresh / .others / .since_poll
                                    what the loop needs to know to decide the next step

    LedgerOwner     what a ledger may tell its poll loop between steps (cluster pub/sub):
      .nudge() / .news() / .poke()  step now / the channel changed / poll now

The seam points one way: the poll loop calls its ledger and reads its answers; a ledger
reaches the loop only through the ``LedgerOwner`` it was opened with, a small object of
the loop's that holds no reference back to the loop (so no cycle to break at the end).

In one process the ledger is the channel itself: it always leads, and each change is
published to the viewers at once. In cluster mode only the replica holding the run's
lease leads; the others follow (no upstream request) and copy what the leader committed.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.events import derive, sse
from bridge.events.channel import Channel, ChannelKey
from bridge.events.feed import ITEM
from bridge.ops.metrics import Metrics
from bridge.polling.status import Reading

#: One event whose id the upstream gave: (id, name, data), a feed's item.
Appended = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Observation:
    """One polled status, encoded and read once."""

    #: The status as one line of JSON (what viewers receive as ``data``).
    data: str
    #: What the status filters made of it: event, state, progress, fingerprint.
    reading: Reading

    @property
    def name(self) -> str:
        """The event it is sent as if it changed: progress, complete or error."""
        return self.reading.event


class LedgerOwner(Protocol):
    """What a ledger may tell its poll loop between the loop's calls."""

    def nudge(self) -> None:
        """Step now (to sync: the ledger learnt something) rather than at the next tick."""

    def news(self) -> None:
        """The channel changed between steps: a waiting first viewer may have it now, and
        an ended run stops at once."""

    def poke(self) -> bool:
        """Poll at once if leading; False when a poke was already pending (coalesced)."""


class Ledger(ABC):
    """Where one poller's findings go. Raises ClusterUnavailable when its store is away."""

    def __init__(self, channel: Channel, owner: LedgerOwner, metrics: Metrics | None) -> None:
        self.channel = channel
        #: The poll loop's side of the seam (see ``LedgerOwner``).
        self.owner = owner
        self._metrics = metrics
        #: This poller may ask the upstream now (one process: always).
        self.leads = True
        #: The channel's latest status is current: a waiting first viewer may have it.
        self.fresh = False
        #: Pollers elsewhere whose viewers still watch this run (keep leading for them).
        self.others = 0
        #: Seconds since anyone last polled this run (None: unknown); a new leader
        #: waits out the rest of the interval so the cadence survives a handover.
        self.since_poll: float | None = None
        #: This poller may take a free lease (cluster mode). False for a listed run on
        #: a replica that does not poll the list: the list's poller feeds it elsewhere.
        self.may_lead = True

    @abstractmethod
    async def sync(self, *, active: bool) -> bool:
        """Before each step of the loop; ``active``: viewers here (or lingering).

        False: the history can no longer be continued here and the poller must stop.
        """

    @abstractmethod
    async def record(self, observation: Observation) -> None:
        """A status the leader just polled: an event if it differs from the latest."""

    @abstractmethod
    async def still(self) -> None:
        """The leader polled and the upstream said nothing changed (304 Not Modified)."""

    @abstractmethod
    async def end(self, code: str, message: str) -> bool:
        """End the run with the bridge's own ``error``; True once it is ended."""

    @abstractmethod
    async def append(self, items: Sequence[Appended], reading: Reading | None) -> bool:
        """Events whose ids the upstream gave (a feed's items, ids their cursors), in
        order, each carrying the run's state as read so far; False: not written (this
        replica no longer leads, or the run ended)."""

    @abstractmethod
    async def conclude(self, page: str, reading: Reading, event_id: str) -> bool:
        """A feed's end at a final state: the built-in end event of ``reading``, its data
        the last page (in the run's vocabulary), with the last item's id; True once ended."""

    @abstractmethod
    async def close(self, in_flight: float | None) -> None:
        """The poller stopped (after it left the registry); ``in_flight``: when the poll
        it was making started (monotonic), None when it was not polling."""

    async def step_aside(self) -> bool:
        """This replica cannot reach the upstream: let another lead; True if it will.

        One process has nobody to hand over to: False.
        """
        return False

    def _published(self, name: str) -> None:
        if self._metrics is not None:
            self._metrics.published(name)


def changed(channel: Channel, observation: Observation) -> bool:
    """Whether ``observation`` would be news to ``channel``'s viewers: it differs from the
    latest status, leaving out the ignored fields (BRIDGE_IGNORE_FIELDS)."""
    latest = channel.history.status
    if latest is None:
        return True
    if channel.fingerprint is not None:
        return channel.fingerprint != observation.reading.fingerprint
    return latest.status != observation.data


def end_status(code: str, message: str) -> str:
    """The ``data`` of the bridge's own terminal error, encoded."""
    return sse.encode_json({"status": code, "errorMessage": message})


class LocalLedger(Ledger):
    """One process: publish each change to the channel's viewers at once."""

    async def sync(self, *, active: bool) -> bool:
        return True

    async def record(self, observation: Observation) -> None:
        self.fresh = True
        if self.channel.history.terminal or not changed(self.channel, observation):
            return
        # The change's derived events, then its status (BRIDGE_EVENTS_FILE).
        derive.publish(self.channel, observation.data, observation.reading, self._metrics)

    async def still(self) -> None:
        self.fresh = True

    async def end(self, code: str, message: str) -> bool:
        self.fresh = True
        if not self.channel.history.terminal:
            derive.publish_end(self.channel, end_status(code, message), self._metrics)
        return True

    async def append(self, items: Sequence[Appended], reading: Reading | None) -> bool:
        self.fresh = True
        for event_id, name, data in items:
            if self.channel.history.terminal:
                return False
            # An item named like a built-in event (seed 002 has "error") is an item: it
            # never ends the stream nor becomes a patch.
            self.channel.publish(name, data, reading, kind=ITEM, event_id=event_id)
        return True

    async def conclude(self, page: str, reading: Reading, event_id: str) -> bool:
        self.fresh = True
        if self.channel.history.terminal:
            return True
        out = derive.status_event(
            self.channel.history.vocabulary, self.channel.key.run_id, page, reading, reading.event
        )
        self.channel.publish(
            out.name,
            out.data,
            reading,
            kind=out.kind,
            raw=out.raw,
            hidden=out.hidden,
            event_id=event_id,
        )
        if not out.hidden:
            self._published(out.name)
        return True

    async def close(self, in_flight: float | None) -> None:
        pass


class LedgerBackend(ABC):
    """Makes the ledgers of one process; see the module docstring for the whole seam."""

    #: True when the backend keeps ended runs' histories itself (Redis): the local
    #: hub then keeps nothing after a poller stopped.
    keeps_ended_runs = False
    #: True when other replicas share the ledgers (Redis): a list of runs is polled by
    #: one of them, and the others learn what it listed through a ledger.
    shared = False

    @abstractmethod
    async def start(self) -> None:
        """Connect (when the app starts serving)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect (after every poller stopped)."""

    @abstractmethod
    def digest_secret(self) -> bytes:
        """The key of the credentials digest; raises ClusterUnavailable when unknown."""

    @abstractmethod
    def open(self, key: ChannelKey, channel: Channel, owner: LedgerOwner) -> Ledger:
        """A ledger for a new poller of ``key`` (``owner``: its poll loop's side of the
        seam); raises ClusterUnavailable when it can't."""

    def health(self) -> tuple[bool, dict[str, str]]:
        """(usable, what /readyz reports about the backend)."""
        return True, {}

    @abstractmethod
    async def relay_poke(self, run_id: str) -> bool:
        """Carry a poke of ``run_id`` to the replica polling it; False: poke locally."""

    @abstractmethod
    def hold_resignations(self) -> None:
        """Shutdown begins: ledgers closed from now on leave their leases to ``resign_held``."""

    @abstractmethod
    async def resign_held(self) -> None:
        """Give up, in one go, what ``hold_resignations`` kept back."""


class MemoryBackend(LedgerBackend):
    """One process: a random digest key, and ledgers that publish locally."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._secret = os.urandom(32)
        self._metrics = metrics

    def digest_secret(self) -> bytes:
        return self._secret

    def open(self, key: ChannelKey, channel: Channel, owner: LedgerOwner) -> Ledger:
        return LocalLedger(channel, owner, self._metrics)

    # Nothing to connect, and no lease to give up.
    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def relay_poke(self, run_id: str) -> bool:
        return False  # one process: the registry pokes its own pollers

    def hold_resignations(self) -> None:
        pass

    async def resign_held(self) -> None:
        pass
