"""What a request says about its viewer, read once at the route and passed on as data."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.events.delta import JSON_PATCH
from bridge.polling.upstream import forwardable
from bridge.settings import Settings


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
    #: answered in a form EventSource retries (see bridge/web/app.py).
    wants_events: bool = False
    #: It asked for ``delta=json-patch``: later statuses as patches (bridge/events/delta.py).
    delta: bool = False


def client_address(trust_forwarded_for: bool, forwarded: str, remote_addr: str | None) -> str:
    """The client's address; with BRIDGE_TRUST_FORWARDED_FOR, X-Forwarded-For's last hop."""
    if trust_forwarded_for:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return remote_addr or "unknown"


def resume_from(last_event_id: str | None, args: Mapping[str, str]) -> str | None:
    """The Last-Event-ID header, else the cursor (or since) query parameter."""
    value = last_event_id
    if not value:
        value = args.get("cursor") or args.get("since")
    return value or None


def viewer_from(
    settings: Settings,
    *,
    offered: Mapping[str, str],
    forwarded_for: str,
    remote_addr: str | None,
    last_event_id: str | None,
    args: Mapping[str, str],
    accept: str,
    transport: asyncio.WriteTransport | None = None,
) -> Viewer:
    """The viewer of a request, from what the route read of it: ``offered``, the request
    headers that may be forwarded (all of them will do: only allow-listed ones are kept),
    ``forwarded_for`` X-Forwarded-For, ``remote_addr`` the peer, ``args`` the query."""
    return Viewer(
        credentials=forwardable(settings.forward_headers, offered),
        client=client_address(settings.trust_forwarded_for, forwarded_for, remote_addr),
        resume_from=resume_from(last_event_id, args),
        transport=transport,
        wants_events="text/event-stream" in accept,
        delta=args.get("delta") == JSON_PATCH,
    )
