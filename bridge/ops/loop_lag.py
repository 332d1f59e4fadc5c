"""How late the event loop runs: the one number that shows every stall of the process.

A stall of the loop (a long collection, a slow callback, a burst of connects) delays
every viewer's events, pings and connects at once, whatever its cause. One task sleeps
``PERIOD`` and records how much later than asked it woke: that lateness is the time the
loop was busy with something else. Exported as a histogram (for rates of stalls over a
bound) and as the longest lag of the last minute (a gauge a dashboard or a bench can
read at any pace without missing a spike between two scrapes).

Also here, because it is the other thing a stalled or leaking loop shows: the number of
asyncio tasks alive, read in O(1) from asyncio's registry of tasks.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from bridge.tasks import cancel_and_wait

#: Seconds between two measurements: 20 wake-ups a second, nothing at 10,000 streams.
PERIOD = 0.05
#: The gauge's window is SLOTS x SLOT seconds (the last minute, to within one slot).
SLOT = 10.0
SLOTS = 6
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RecentMax:
    """The largest value seen in the last ``slots`` x ``slot`` seconds, in O(1) memory."""

    def __init__(self, slot: float = SLOT, slots: int = SLOTS) -> None:
        self.slot = slot
        self._values = [0.0] * slots
        self._stamps = [-1] * slots

    def add(self, value: float, now: float) -> None:
        index = int(now // self.slot)
        i = index % len(self._values)
        if self._stamps[i] != index:
            self._stamps[i] = index
            self._values[i] = 0.0
        self._values[i] = max(self._values[i], value)

    def value(self, now: float) -> float:
        oldest = int(now // self.slot) - len(self._values) + 1
        return max(
            (v for v, s in zip(self._values, self._stamps, strict=True) if s >= oldest),
            default=0.0,
        )


def task_registry() -> weakref.WeakSet[Any] | None:
    """asyncio's registry of live tasks, whose size is O(1) to read.

    ``asyncio.all_tasks()`` copies and filters it: about 25 ms at 60,000 tasks (10,000
    streams), a stall of its own on every scrape. The registry is private: where it is
    not found (a Python that moved it) the gauge is left out rather than made slow."""
    for name in ("_scheduled_tasks", "_all_tasks"):  # 3.12+, 3.11
        registry = getattr(asyncio.tasks, name, None)
        if isinstance(registry, weakref.WeakSet):
            return registry
    return None


class LoopLag:
    """The loop-lag task and its metrics; started and stopped by the services."""

    def __init__(self, registry: CollectorRegistry, period: float = PERIOD) -> None:
        self.period = period
        self.recent = RecentMax()
        self.histogram = Histogram(
            "bridge_event_loop_lag_seconds",
            "How much later than asked a periodic timer ran: the time the event loop was busy",
            buckets=BUCKETS,
            registry=registry,
        )
        Gauge(
            "bridge_event_loop_lag_max_seconds",
            "The longest event-loop lag in the last minute",
            registry=registry,
        ).set_function(lambda: self.recent.value(time.monotonic()))
        tasks = task_registry()
        if tasks is not None:
            Gauge(
                "bridge_asyncio_tasks",
                "asyncio tasks alive (a count that grows with no more streams is a leak)",
                registry=registry,
            ).set_function(lambda: len(tasks))
        self._task: asyncio.Task[None] | None = None
        #: Set after each measurement (for tests: wait on it instead of sleeping).
        self.measured = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bridge:loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def record(self, lag: float, now: float) -> None:
        lag = max(0.0, lag)
        self.histogram.observe(lag)
        self.recent.add(lag, now)
        self.measured.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.record(loop.time() - asked, time.monotonic())
