"""Small helpers for tasks that have one owner who awaits them."""

from __future__ import annotations

import asyncio
import logging
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
