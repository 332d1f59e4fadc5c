"""How the bridge treats an upstream in trouble: backoff with jitter, and a circuit breaker."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

#: The longest Retry-After the bridge honours, in seconds (a larger one is clipped).
MAX_RETRY_AFTER = 300.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    delay = when.timestamp() - time.time()
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


class Backoff:
    """Exponential backoff with jitter: base * 2**n, at most ``cap``, times 0.5-1.0."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        jittered: float = delay * self._rng.uniform(0.5, 1.0)
        return max(jittered, retry_after or 0.0)

    def reset(self) -> None:
        self.failures = 0


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one trial through after ``cooldown``.

    closed: requests flow. open: requests fail at once, without touching the upstream.
    half-open: one trial request; success closes, failure opens again.
    """

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def failure(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.threshold:
            self._opened_at = time.monotonic()
        self._trial_running = False

    def release_trial(self) -> None:
        """A trial that ended without a verdict on the upstream (e.g. cancelled)."""
        self._trial_running = False
