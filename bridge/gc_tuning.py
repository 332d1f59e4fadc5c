"""Keep Python's cyclic garbage collector from pausing a process full of streams.

Measured (bench/FINDINGS.md): with 10,000 open streams the collector runs inside the
fan-out, young collections take 70-150 ms while freeing nothing, and full collections
0.3-1.4 s. Long-lived objects (connections, their tasks and buffers) are moved out of
its sight with ``gc.freeze()``, young collections are made rarer, and a full collection
(which also reclaims cycles among frozen objects that died) runs on a fixed, long
period instead of whenever the heuristics fire: the price is that cyclic garbage waits
up to BRIDGE_GC_FULL_INTERVAL to be freed, and that one collection pauses the process
(about a second at 10,000 streams on the bench machine, once per interval).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from bridge.tasks import cancel_and_wait

log = logging.getLogger("bridge.gc")

#: Allocations (minus deallocations) before a young collection; CPython's default is 700.
YOUNG_THRESHOLD = 50_000


class GcTuner:
    def __init__(self, freeze_every: float, full_every: float) -> None:
        self.freeze_every = freeze_every
        self.full_every = full_every
        self._task: asyncio.Task[None] | None = None
        self._saved: tuple[int, int, int] | None = None
        self.full_collections = 0

    def start(self) -> None:
        self._saved = gc.get_threshold()
        gc.collect()
        gc.freeze()
        # Older generations are left to the scheduled full collection.
        gc.set_threshold(YOUNG_THRESHOLD, 1000, 1000)
        self._task = asyncio.create_task(self._run(), name="bridge:gc")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._saved is not None:
            gc.unfreeze()
            gc.set_threshold(*self._saved)
            self._saved = None

    async def _run(self) -> None:
        next_full = time.monotonic() + self.full_every
        while True:
            await asyncio.sleep(self.freeze_every)
            if time.monotonic() >= next_full:
                self.full()
                next_full = time.monotonic() + self.full_every
            else:
                # Objects that survived since the last tick (mostly new streams) leave the
                # collector's sight. gc.freeze() splices lists: it costs nothing at any
                # heap size, where a collection of 10,000 new streams took over a second.
                gc.freeze()

    def full(self) -> None:
        started = time.monotonic()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.full_collections += 1
        log.debug(
            "full collection: %d unreachable, %.0f ms", found, (time.monotonic() - started) * 1e3
        )
