"""Connection caps: how many streams the bridge, and one client, may hold open (none once
the bridge drains)."""

from __future__ import annotations

from bridge.errors import Draining, OverCapacity, TooManyStreams


class StreamLimiter:
    def __init__(self, total: int, per_client: int, retry_after: float = 5.0) -> None:
        self.total = total
        self.per_client = per_client
        self.retry_after = retry_after
        self.open = 0
        #: The bridge is shutting down: every new stream is refused.
        self.draining = False
        # Only clients with open streams have an entry, so this stays as small as `open`.
        self._by_client: dict[str, int] = {}

    def take(self, client: str) -> None:
        """Count one more stream of ``client``, or refuse it; ``give`` returns the slot.

        A pair rather than a context manager: a stream is held open long after its
        opening returns, and a bound method to call then costs less per viewer than a
        suspended context manager.
        """
        if self.draining:
            raise Draining("The bridge is shutting down.")
        if self.open >= self.total:
            raise OverCapacity(
                "The bridge is at its connection limit; try again shortly.", self.retry_after
            )
        held = self._by_client.get(client, 0)
        if held >= self.per_client:
            raise TooManyStreams(
                "This client has too many open streams; close some and try again.",
                self.retry_after,
            )
        self.open += 1
        self._by_client[client] = held + 1

    def give(self, client: str) -> None:
        self.open -= 1
        left = self._by_client[client] - 1
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]

    def drain(self) -> None:
        """Refuse every stream from now on; the open ones keep their slots until they end."""
        self.draining = True

    def clients(self) -> int:
        return len(self._by_client)
