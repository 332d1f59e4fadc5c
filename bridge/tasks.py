"""Small helpers for tasks that have one owner who awaits them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("bridge.tasks")


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task we own and wait until it has finished.

    The task's own CancelledError is expected and swallowed; a cancellation of the
    caller itself is re-raised. A failure of the task is logged once (type only).
    """
    if task.done():
        _reap(task)
        return
    task.cancel()
    try:
        await asyncio.shield(_wait(task))
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    _reap(task)


async def _wait(task: asyncio.Task[Any]) -> None:
    await asyncio.wait([task])


def _reap(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("task %s failed: %s", task.get_name(), type(error).__name__)


class OwnedTask:
    """The one background task of a service (the ticker, the loop-lag probe, the GC
    tuner): ``start`` runs it, ``stop`` cancels it and waits until it has finished."""

    __slots__ = ("_name", "_run", "_task")

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
