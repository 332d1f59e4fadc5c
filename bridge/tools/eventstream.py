"""An event-stream parser written to the WHATWG HTML rules (9.2.6 "Interpreting an event stream").

Used by ``sse-bridge watch`` and by the tests, which check the bridge's output with a
parser that knows nothing of how the bridge writes it.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass

#: Longest comment kept, in characters.
MAX_COMMENT = 500


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    event: str
    data: str
    #: The last event id in force when this event was dispatched ("" if none).
    id: str
    #: True when the frame carried an id field itself.
    has_id: bool


class EventStreamParser:
    """Feed bytes in any chunking; iterate the events that complete."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending_cr = False
        # Keeps an incomplete UTF-8 sequence across chunks; invalid bytes become U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._data: list[str] = []
        self._event = ""
        self._saw_id = False
        self._first = True
        self.last_event_id = ""
        self.retry: int | None = None
        #: The text of the last comment line (after ":"), cut at MAX_COMMENT; the spec
        #: ignores comments, but a client may read why a server refused it there.
        self.last_comment: str | None = None

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        text = self._decoder.decode(chunk)
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        return list(self._lines(text))

    def _lines(self, text: str) -> Iterator[ParsedEvent]:
        for char in text:
            if self._pending_cr:
                self._pending_cr = False
                if char == "\n":
                    continue
            if char == "\r":
                self._pending_cr = True
                yield from self._line(self._buffer)
                self._buffer = ""
            elif char == "\n":
                yield from self._line(self._buffer)
                self._buffer = ""
            else:
                self._buffer += char

    def _line(self, line: str) -> Iterator[ParsedEvent]:
        if line == "":
            event = self._dispatch()
            if event is not None:
                yield event
            return
        if line.startswith(":"):
            self.last_comment = line[1 : MAX_COMMENT + 1].strip()
            return
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            name, value = line, ""
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
                self._saw_id = True
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self) -> ParsedEvent | None:
        saw_id, self._saw_id = self._saw_id, False
        if not self._data:
            self._event = ""
            return None
        data = "\n".join(self._data)
        event = ParsedEvent(self._event or "message", data, self.last_event_id, saw_id)
        self._data = []
        self._event = ""
        return event
