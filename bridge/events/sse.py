"""Server-Sent Events framing that no upstream value can break.

Event names are the bridge's own constants, ids are made by the bridge, and ``data`` is
always one line of compact JSON: ``json.dumps`` escapes CR, LF and every other control
character inside strings, and ``ensure_ascii`` leaves no raw U+2028/U+0085 or lone
surrogate for a parser to trip on. Anything that still carries CR or LF is refused,
never copied (the invariant is checked, not assumed).
"""

from __future__ import annotations

import json
from typing import Any, Final

PROGRESS: Final = "progress"
COMPLETE: Final = "complete"
ERROR: Final = "error"
TIMEOUT: Final = "timeout"
PING: Final = "ping"
#: The name of an unnamed event: no ``event:`` line, what ``EventSource.onmessage`` gets.
MESSAGE: Final = "message"


def _check(name: str, value: str) -> None:
    # Three scans in C: a regex search per field cost more than the rest of the frame.
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError(f"SSE {name} field would contain a line break or NUL")


#: ``json.dumps`` with these arguments builds an encoder at every call (about 1 us of a
#: 4 us small status); one encoder, made once, encodes the same.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_json(value: Any) -> str:
    return _ENCODER.encode(value)


def frame(event: str, data: str, event_id: str | None = None) -> bytes:
    """One complete event; ``data`` must already be one line (see ``encode_json``).

    ``message`` is sent unnamed: a client's default name for an event without one."""
    head = ""
    if event != MESSAGE:
        _check("event", event)
        head = f"event: {event}\n"
    if event_id is not None:
        _check("id", event_id)
        head += f"id: {event_id}\n"
    _check("data", data)
    return f"{head}data: {data}\n\n".encode()


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (streams are chunked: they have no length).

    Used where frames are written to a socket directly (bridge/streams/direct.py)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def retry(milliseconds: int) -> bytes:
    return f"retry: {int(milliseconds)}\n\n".encode()


def ping(timestamp: float) -> bytes:
    return frame(PING, str(int(timestamp)))


def timeout_message(seconds: float) -> str:
    if seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"Stream timeout after {minutes} minute{'s' if minutes != 1 else ''}"
    return f"Stream timeout after {seconds:g} seconds"


def timeout(seconds: float) -> bytes:
    return frame(TIMEOUT, encode_json({"message": timeout_message(seconds)}))
