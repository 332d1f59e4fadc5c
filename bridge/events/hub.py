"""The process's channels: live ones in a dict, stopped ones in a bounded TTL cache.

One hub per process, in every mode: sharing across replicas is the ledger's business
(bridge/polling/ledger.py); the hub only keeps this process's copy of each watched run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from cachetools import TTLCache

from bridge.events.channel import Channel, ChannelKey, Subscription
from bridge.events.history import RunHistory
from bridge.events.vocabulary import DEFAULT, Vocabulary


class Hub:
    def __init__(
        self,
        *,
        history_size: int,
        history_max_bytes: int,
        history_runs: int,
        history_ttl: float,
        history: Callable[..., RunHistory] = RunHistory,
        vocabulary: Vocabulary = DEFAULT,
    ) -> None:
        #: What a new channel's history is (a feed's keeps the upstream's cursors as ids).
        self._history = history
        self.vocabulary = vocabulary
        self._history_size = history_size
        self._history_max_bytes = history_max_bytes
        self._live: dict[ChannelKey, Channel] = {}
        # Kept a while after the poller stopped so that a reconnect, even after the run
        # ended, is answered from memory; bounded in count and in time.
        self._retired: TTLCache[ChannelKey, Channel] = TTLCache(
            maxsize=history_runs, ttl=max(history_ttl, 1e-9)
        )
        self._keep_retired = history_ttl > 0

    def find(self, key: ChannelKey) -> Channel | None:
        return self._live.get(key) or self._retired.get(key)

    def open(self, key: ChannelKey) -> Channel:
        """The live channel for ``key``, revived from the cache or made new."""
        channel = self._live.get(key)
        if channel is None:
            channel = self._retired.pop(key, None)
            if channel is None or channel.synthetic_end:
                history = self._history(
                    self._history_size, self._history_max_bytes, vocabulary=self.vocabulary
                )
                channel = Channel(key, history)
            self._live[key] = channel
        return channel

    def retire(self, key: ChannelKey) -> None:
        channel = self._live.pop(key, None)
        if channel is None or not self._keep_retired or channel.synthetic_end:
            return
        if channel.history.latest is not None:
            self._retired[key] = channel

    def join(self, channel: Channel, wake: asyncio.Event | None = None) -> Subscription:
        """Watch ``channel`` until ``channel.discard(subscription)``; several
        subscriptions may share one ``wake`` event.

        Not a context manager: a stream held open after its opening keeps a bound method
        to call later, which costs less per viewer than a suspended context manager.
        """
        subscription = Subscription(channel, wake) if wake is not None else Subscription(channel)
        channel.add(subscription)
        return subscription

    def live_channels(self) -> Iterator[Channel]:
        return iter(list(self._live.values()))

    @property
    def live_count(self) -> int:
        return len(self._live)
