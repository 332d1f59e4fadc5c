"""Reading a request's viewer: the one reading both the Quart routes and the stream front use."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bridge.events.delta import JSON_PATCH
from bridge.polling.upstream import forwardable
from bridge.settings import Settings
from bridge.streams.viewer import Viewer


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
