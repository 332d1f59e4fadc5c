"""What a request says about its viewer, as data: read once at the route (bridge/web/viewers.py)
and passed on to the opening and the framers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Viewer:
    #: The allow-listed request headers (BRIDGE_FORWARD_HEADERS): its credentials.
    credentials: dict[str, str]
    #: Who counts against the per-client stream cap.
    client: str
    #: Last-Event-ID, else the ``cursor`` (or ``since``) query parameter.
    resume_from: str | None = None
    #: The viewer's socket when its stream may take the fast path (bridge/streams/direct.py).
    transport: asyncio.WriteTransport | None = None
    #: It accepts text/event-stream (an EventSource does): a transient refusal is then
    #: answered in a form EventSource retries (bridge/web/reply.py's ``retry_reply``).
    wants_events: bool = False
    #: It asked for ``delta=json-patch``: later statuses as patches (bridge/events/delta.py).
    delta: bool = False
