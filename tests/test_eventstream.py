"""The event-stream parser against the WHATWG rules (HTML 9.2.6), in any chunking."""

from __future__ import annotations

import pytest

from bridge.tools.eventstream import EventStreamParser, ParsedEvent


def events(raw: bytes) -> list[tuple[str, str, str]]:
    return [(e.event, e.data, e.id) for e in EventStreamParser().feed(raw)]


def chunked(raw: bytes, size: int) -> list[ParsedEvent]:
    parser = EventStreamParser()
    out: list[ParsedEvent] = []
    for i in range(0, len(raw), size):
        out.extend(parser.feed(raw[i : i + size]))
    return out


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending_works(eol: bytes) -> None:
    raw = eol.join([b"event: a", b"id: 1", b"data: x", b"data: y", b"", b"data: z", b"", b""])
    assert events(raw) == [("a", "x\ny", "1"), ("message", "z", "1")]


def test_mixed_line_endings_in_one_stream() -> None:
    raw = b"data: a\rdata: b\ndata: c\r\n\r\ndata: d\n\r"
    assert events(raw) == [("message", "a\nb\nc", ""), ("message", "d", "")]


def test_comments_are_ignored() -> None:
    assert events(b": hello\n:\ndata: x\n: between\n\n:only a comment\n\n") == [
        ("message", "x", "")
    ]


def test_one_leading_bom_is_ignored_and_only_one() -> None:
    assert events(b"\xef\xbb\xbfdata: x\n\n") == [("message", "x", "")]
    # A second BOM is part of the first field name, which is then unknown.
    assert events(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [("message", "y", "")]
    # A BOM later in the stream is data, not a marker.
    assert events(b"data: x\n\n\xef\xbb\xbfdata: y\n\n") == [("message", "x", "")]


def test_bom_split_across_chunks_is_still_ignored() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"\xef") == []
    assert parser.feed(b"\xbb") == []
    (event,) = parser.feed(b"\xbfdata: x\n\n")
    assert event.data == "x"


def test_field_without_colon_has_an_empty_value() -> None:
    assert events(b"data\n\n") == [("message", "", "")]
    assert events(b"data\ndata\n\n") == [("message", "\n", "")]
    # "event" alone resets the type to the default.
    assert events(b"event\ndata: x\n\n") == [("message", "x", "")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert events(b"data:x\n\n") == [("message", "x", "")]
    assert events(b"data:  x \n\n") == [("message", " x ", "")]
    assert events(b"data:\tx\n\n") == [("message", "\tx", "")]
    assert events(b"data: a: b\n\n") == [("message", "a: b", "")]


def test_unknown_and_wrongly_cased_fields_are_ignored() -> None:
    assert events(b"Data: x\nDATA: y\nfoo: z\n data: w\ndata: v\n\n") == [("message", "v", "")]


def test_no_data_means_no_event_and_the_type_is_reset() -> None:
    assert events(b"event: a\n\ndata: x\n\n") == [("message", "x", "")]
    assert events(b"event: a\nid: 5\n\n") == []


def test_id_with_nul_is_ignored_and_id_persists() -> None:
    parser = EventStreamParser()
    got = parser.feed(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\ndata: c\n\n")
    assert [(e.data, e.id, e.has_id) for e in got] == [
        ("a", "1", True),
        ("b", "1", False),
        ("c", "1", False),
    ]
    assert parser.last_event_id == "1"


def test_empty_id_resets_the_last_event_id() -> None:
    parser = EventStreamParser()
    got = parser.feed(b"id: 1\ndata: a\n\nid\ndata: b\n\n")
    assert [e.id for e in got] == ["1", ""]
    assert parser.last_event_id == ""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"retry: 1500", 1500),
        (b"retry:0", 0),
        (b"retry: 15a", None),
        (b"retry: -1", None),
        (b"retry: 1.5", None),
        (b"retry:  15", None),
        (b"retry: ", None),
        (b"retry", None),
        ("retry: \u0661\u0662".encode(), None),  # Arabic-Indic digits are not ASCII digits
        ("retry: \uff11".encode(), None),  # fullwidth 1
    ],
)
def test_retry_takes_ascii_digits_only(line: bytes, expected: int | None) -> None:
    parser = EventStreamParser()
    assert parser.feed(line + b"\n\n") == []
    assert parser.retry == expected


def test_retry_keeps_the_last_valid_value() -> None:
    parser = EventStreamParser()
    parser.feed(b"retry: 100\n\nretry: x\n\n")
    assert parser.retry == 100


def test_incomplete_last_event_is_not_dispatched() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"data: y") == []
    (event,) = parser.feed(b"\n\n")
    assert event.data == "x\ny"


def test_crlf_split_between_chunks_is_one_line_break() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    # The LF completing the CRLF must not count as a second (blank) line.
    assert parser.feed(b"\ndata: b\r") == []
    got = parser.feed(b"\n\r\n")
    assert [e.data for e in got] == ["a\nb"]


def test_cr_at_chunk_end_followed_by_another_cr_is_a_blank_line() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    (event,) = parser.feed(b"\r")
    assert event.data == "a"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_multibyte_utf8_split_anywhere(size: int) -> None:
    text = "h\u00e9 \u20ac \U0001f600 \u2028 \u0085 end"
    raw = b"event: \xc3\xa9v\r\ndata: " + text.encode() + b"\r\n\r\n"
    (event,) = chunked(raw, size)
    assert (event.event, event.data) == ("\u00e9v", text)


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert events(b"data: a\xffb\n\n") == [("message", "a\ufffdb", "")]
    assert events(b"data: \xed\xa0\x80\n\n") == [("message", "\ufffd\ufffd\ufffd", "")]


def test_invalid_byte_then_a_split_sequence_in_the_same_chunk() -> None:
    parser = EventStreamParser()
    # An invalid byte early must not make the parser give up on the split euro sign.
    assert parser.feed(b"data: \xff \xe2\x82") == []
    (event,) = parser.feed(b"\xac\n\n")
    assert event.data == "\ufffd \u20ac"


def test_truncated_sequence_followed_by_ascii_is_replaced() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: \xe2\x82") == []
    (event,) = parser.feed(b"x\n\n")
    assert event.data == "\ufffdx"


def test_nul_and_other_controls_are_data() -> None:
    assert events(b"data: a\x00b\x0bc\x1f\n\n") == [("message", "a\x00b\x0bc\x1f", "")]


def test_unicode_line_separators_do_not_end_lines() -> None:
    raw = "data: a\u2028b\u2029c\u0085d\x0c\n\n".encode()
    assert events(raw) == [("message", "a\u2028b\u2029c\u0085d\x0c", "")]
