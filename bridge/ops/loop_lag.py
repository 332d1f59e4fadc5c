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

from prometheus_client import CollectorRegistry

from bridge.ops.metrics import LoopLagMetrics
from bridge.tasks import OwnedTask

#: Seconds between two measurements: 20 wake-ups a second, nothing at 10,000 streams.
PERIOD = 0.05


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
        tasks = task_registry()
        self.metrics = LoopLagMetrics(
            registry, tasks=(lambda: len(tasks)) if tasks is not None else None
        )
        self._task = OwnedTask(self._run, "bridge:loop-lag")
        #: Set after each measurement (for tests: wait on it instead of sleeping).
        self.measured = asyncio.Event()

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    def record(self, lag: float, now: float) -> None:
        self.metrics.observe(max(0.0, lag), now)
        self.measured.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.record(loop.time() - asked, time.monotonic())
