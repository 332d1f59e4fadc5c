"""What a status object means: still going, succeeded or failed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge import sse


@dataclass(frozen=True, slots=True)
class Classifier:
    field: str
    success: frozenset[str]
    failure: frozenset[str]

    def state(self, status: dict[str, Any]) -> str | None:
        value = status.get(self.field)
        return value if isinstance(value, str) else None

    def event_for(self, status: dict[str, Any]) -> str:
        """The event name a status is sent as: progress, complete or error."""
        state = self.state(status)
        if state in self.success:
            return sse.COMPLETE
        if state in self.failure:
            return sse.ERROR
        return sse.PROGRESS


def is_terminal(event: str) -> bool:
    return event in (sse.COMPLETE, sse.ERROR)
