"""Deltas (``delta=json-patch``): each ``progress`` after a viewer's first whole status
as an RFC 6902 JSON Patch from the previous status to the new one.

A patch is made by the ``jsonpatch`` library (RFC 6902, with ``jsonpointer``; see
https://python-json-patch.readthedocs.io/en/latest/tutorial.html#creating-a-patch), once
per change of a channel, the first time a viewer needs it, and shared by every viewer
that asks: a run's history keeps its patch frames beside it (``Deltas``, bounded like
the history). A patch is always from the status event just before to this one, in what
viewers are sent (a reshaped ``progress`` is patched as sent), so a viewer gets a patch
only when it holds that previous status; otherwise (it joined, resumed past a trimmed
id, or was coalesced past some statuses) it gets the whole ``progress``. Delta viewers
take the ASGI path: their frames are their own, not the channel's shared chunk.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jsonpatch

from bridge.events import sse
from bridge.events.history import Event, RunHistory

#: The query parameter's one value.
JSON_PATCH = "json-patch"
#: The event a patch is sent as.
PATCH = "patch"
#: Patch frames kept per history (the newest; an older one is made again if asked).
KEEP = 64


@dataclass(frozen=True, slots=True)
class Patch:
    #: The seq of the status it applies to.
    base: int
    #: The operations, one line of JSON.
    data: str
    #: As a single-run stream sends it (``event: patch``, the status's id).
    frame: bytes


class Deltas:
    """One history's patches, made once per change."""

    def __init__(self) -> None:
        self._frames: OrderedDict[int, Patch] = OrderedDict()
        #: The newest status decoded, to patch the next change against without decoding
        #: it again: (seq, value).
        self._decoded: tuple[int, Any] | None = None

    def patch(self, history: RunHistory, event: Event) -> Patch | None:
        """The patch of status ``event``, or None where there is nothing to patch
        against (no earlier status held)."""
        held = self._frames.get(event.seq)
        if held is not None:
            return held
        previous = previous_status(history, event.seq)
        if previous is None:
            return None
        before = self._value(previous)
        after = self._value(event)
        data = sse.encode_json(jsonpatch.make_patch(before, after).patch)
        made = Patch(previous.seq, data, sse.frame(PATCH, data, event.id))
        self._frames[event.seq] = made
        while len(self._frames) > KEEP:
            self._frames.popitem(last=False)
        return made

    def release(self) -> None:
        """The run ended: the decoded status is not kept (the patches are small)."""
        self._decoded = None

    def _value(self, event: Event) -> Any:
        decoded = self._decoded
        if decoded is not None and decoded[0] == event.seq:
            return decoded[1]
        value = json.loads(event.data)
        if self._decoded is None or event.seq >= self._decoded[0]:
            self._decoded = (event.seq, value)
        return value


_DELTAS: weakref.WeakKeyDictionary[RunHistory, Deltas] = weakref.WeakKeyDictionary()


def deltas(history: RunHistory) -> Deltas:
    found = _DELTAS.get(history)
    if found is None:
        found = _DELTAS[history] = Deltas()
    return found


def previous_status(history: RunHistory, seq: int) -> Event | None:
    """The newest status event sent before ``seq`` that history still holds."""
    for event in history.newest_first():
        if event.seq < seq and event.is_status:
            return event if event.sent and event.kind == sse.PROGRESS else None
    return None


class DeltaView:
    """One delta viewer's place: the seq of the last whole status it holds."""

    __slots__ = ("history", "holds")

    def __init__(self, history: RunHistory, holds: int | None) -> None:
        self.history = history
        self.holds = holds

    def patch(self, event: Event) -> Patch | None:
        """The patch to send for ``event`` instead of it, where this viewer can apply one."""
        if not (event.is_status and event.sent and event.kind == sse.PROGRESS):
            if event.is_status and event.sent:
                self.holds = None  # the end: nothing to patch after it
                if event.terminal:
                    deltas(self.history).release()
            return None
        made = None
        if self.holds is not None:
            made = deltas(self.history).patch(self.history, event)
            if made is not None and made.base != self.holds:
                made = None
        self.holds = event.seq
        return made

    def frame(self, event: Event) -> bytes:
        """What this viewer is sent for ``event`` on a single-run stream."""
        made = self.patch(event)
        return made.frame if made is not None else event.frame


def view_after(history: RunHistory, seq: int | None) -> DeltaView:
    """A delta viewer placed after ``seq`` (None: it holds no status yet)."""
    if seq is None:
        return DeltaView(history, None)
    for event in history.newest_first():
        if event.seq <= seq and event.is_status:
            held = event.seq if event.sent and event.kind == sse.PROGRESS else None
            return DeltaView(history, held)
    return DeltaView(history, None)
