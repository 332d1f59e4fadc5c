"""SSE framing, checked by parsing it back with the WHATWG parser (bridge/tools/eventstream.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.events import sse
from bridge.tools.eventstream import EventStreamParser, ParsedEvent

HOSTILE = [
    "a\rb",
    "a\nb",
    "a\r\nb",
    "\r\n\r\n",
    "\n\nevent: complete\ndata: {}\n\n",
    "\r\rid: 1\r\r",
    "a\x00b",
    "\x00",
    "line\u2028separator",
    "para\u2029graph",
    "next\u0085line",
    "lone \ud800 high",
    "lone \udfff low",
    "\udc00\ud800 reversed pair",
    "event: x",
    "data: forged",
    "id: 999",
    "retry: 1",
    ": comment",
    "\ufeffbom",
    '"},"status":"completed',
    "\\",
    "\x1b[31mred\x1b[0m",
    "\x7f\x80\x9f",
    "emoji \U0001f600",
    "",
]


def parse(raw: bytes) -> list[ParsedEvent]:
    parser = EventStreamParser()
    return parser.feed(raw)


def parse_bytewise(raw: bytes) -> list[ParsedEvent]:
    parser = EventStreamParser()
    out: list[ParsedEvent] = []
    for i in range(len(raw)):
        out.extend(parser.feed(raw[i : i + 1]))
    return out


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_gives_exactly_one_event_with_the_same_data(value: str) -> None:
    status: dict[str, Any] = {"status": value, "errorMessage": value, value: [value, {value: 1}]}
    raw = sse.frame(sse.PROGRESS, sse.encode_json(status), "17-3")
    for events in (parse(raw), parse_bytewise(raw)):
        assert len(events) == 1
        (event,) = events
        assert event.event == "progress"
        assert event.id == "17-3" and event.has_id
        assert json.loads(event.data) == status


def test_encoded_json_is_one_line_of_ascii() -> None:
    text = sse.encode_json({"v": "".join(HOSTILE)})
    assert text.isascii()
    assert not any(c in text for c in "\r\n\x00")
    assert json.loads(text) == {"v": "".join(HOSTILE)}


def test_frame_layout() -> None:
    assert sse.frame("progress", '{"a":1}', "5-1") == (
        b'event: progress\nid: 5-1\ndata: {"a":1}\n\n'
    )
    assert sse.frame("ping", "12") == b"event: ping\ndata: 12\n\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\n", "a\x00b"])
def test_frame_refuses_line_breaks_and_nul_in_any_field(bad: str) -> None:
    with pytest.raises(ValueError):
        sse.frame(sse.PROGRESS, bad)
    with pytest.raises(ValueError):
        sse.frame(bad, "{}")
    with pytest.raises(ValueError):
        sse.frame(sse.PROGRESS, "{}", bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_not_sent(value: float) -> None:
    with pytest.raises(ValueError):
        sse.encode_json({"progress": value})


def test_retry_line_is_its_own_block() -> None:
    raw = sse.retry(2500)
    assert raw == b"retry: 2500\n\n"
    parser = EventStreamParser()
    assert parser.feed(raw) == []
    assert parser.retry == 2500


def test_ping_carries_an_integer_timestamp_and_no_id() -> None:
    (event,) = parse(sse.ping(1_700_000_000.9))
    assert (event.event, event.data, event.has_id) == ("ping", "1700000000", False)


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (600, "Stream timeout after 10 minutes"),
        (60, "Stream timeout after 1 minute"),
        (120.0, "Stream timeout after 2 minutes"),
        (90, "Stream timeout after 90 seconds"),
        (0.5, "Stream timeout after 0.5 seconds"),
    ],
)
def test_timeout_event(seconds: float, message: str) -> None:
    (event,) = parse(sse.timeout(seconds))
    assert event.event == "timeout"
    assert not event.has_id
    assert json.loads(event.data) == {"message": message}


def test_a_sequence_of_frames_parses_to_the_same_sequence() -> None:
    statuses = [{"status": s, "n": i} for i, s in enumerate(HOSTILE)]
    raw = sse.retry(1000) + b"".join(
        sse.frame(sse.PROGRESS, sse.encode_json(s), f"1-{i}") for i, s in enumerate(statuses)
    )
    events = parse_bytewise(raw)
    assert [json.loads(e.data) for e in events] == statuses
    assert [e.id for e in events] == [f"1-{i}" for i in range(len(statuses))]
