"""RunHistory: ids, resume after an id, and what an unknown or evicted id gets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge import sse
from bridge.eventstream import EventStreamParser
from bridge.history import Event, RunHistory, parse_id

EPOCH = 1_700_000_000_000


def status(n: int, state: str = "running") -> dict[str, Any]:
    return {"id": "r1", "status": state, "progress": n / 100}


def filled(count: int, size: int = 256) -> RunHistory:
    history = RunHistory(size, epoch=EPOCH)
    for n in range(1, count + 1):
        history.append(sse.PROGRESS, status(n))
    return history


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def test_ids_increase_and_carry_the_epoch() -> None:
    history = filled(5)
    events = history.after(0)
    assert [e.id for e in events] == [f"{EPOCH}-{n}" for n in range(1, 6)]
    assert seqs(events) == [1, 2, 3, 4, 5]
    assert [parse_id(e.id) for e in events] == [(EPOCH, n) for n in range(1, 6)]


def test_event_frame_is_the_sse_frame_of_the_status() -> None:
    history = RunHistory(4, epoch=EPOCH)
    event = history.append(sse.PROGRESS, status(1))
    (parsed,) = EventStreamParser().feed(event.frame)
    assert (parsed.event, parsed.id) == ("progress", event.id)
    assert json.loads(parsed.data) == status(1) == json.loads(event.data)


def test_two_histories_of_a_run_do_not_share_ids() -> None:
    old = RunHistory(8, epoch=EPOCH)
    new = RunHistory(8, epoch=EPOCH + 1)
    old_id = old.append(sse.PROGRESS, status(1)).id
    for n in range(1, 4):
        new.append(sse.PROGRESS, status(n))
    # seq 1 exists in the new history, but the id is from the old one: unknown.
    assert new.holds(old_id) is None
    assert seqs(new.resume(old_id)) == [3]


def test_resume_replays_exactly_the_events_after_the_id() -> None:
    history = filled(6)
    assert seqs(history.resume(f"{EPOCH}-2")) == [3, 4, 5, 6]
    assert seqs(history.resume(f"{EPOCH}-5")) == [6]


def test_resume_from_the_latest_id_replays_nothing() -> None:
    history = filled(3)
    assert history.resume(f"{EPOCH}-3") == []
    assert history.holds(f"{EPOCH}-3") == 3


def test_resume_from_seq_zero_replays_everything_held() -> None:
    history = filled(3)
    assert seqs(history.resume(f"{EPOCH}-0")) == [1, 2, 3]


@pytest.mark.parametrize(
    "last_id",
    [
        None,
        "",
        "garbage",
        "1",
        f"{EPOCH}",
        f"{EPOCH}-",
        f"-{EPOCH}",
        f"{EPOCH}-3-1",
        f"{EPOCH + 1}-2",
        f"{EPOCH - 1}-2",
        f"{EPOCH}-99",
        f"{EPOCH}--1",
        f"{EPOCH}-1.5",
        f"{EPOCH}-0x2",
        f"{EPOCH}-2\x00",
        f"{EPOCH}-\r\n2",
        f"{EPOCH}-2\r\nevent: complete",
        "garbage\r\n",
        f"{EPOCH}-\uff12",  # fullwidth 2
        "9" * 17 + "-1",
        f"{EPOCH}-" + "9" * 19,
        "9" * 5000,
        "0-0",
        "\ud800",
    ],
)
def test_unknown_or_malformed_id_gets_the_latest_only(last_id: str | None) -> None:
    history = filled(4)
    assert history.holds(last_id) is None
    assert seqs(history.resume(last_id)) == [4]


def test_parse_id_accepts_only_two_ascii_digit_groups() -> None:
    assert parse_id(f"{EPOCH}-7") == (EPOCH, 7)
    # Surrounding whitespace is trimmed (as HTTP trims header values); inside, it is not.
    assert parse_id(f" {EPOCH}-7 ") == (EPOCH, 7)
    assert parse_id(f"{EPOCH}- 7") is None
    assert parse_id("\uff11-\uff12") is None
    assert parse_id("1-2-3") is None
    assert parse_id(None) is None


def test_empty_history_resumes_to_nothing() -> None:
    history = RunHistory(4, epoch=EPOCH)
    assert history.latest is None
    assert history.resume(None) == []
    assert history.resume(f"{EPOCH}-1") == []
    assert history.after(0) == []


def test_evicted_id_gets_the_latest_and_a_just_evicted_one_still_resumes() -> None:
    history = filled(10, size=4)
    assert len(history) == 4
    assert seqs(history.after(0)) == [10]  # seq 0 is long gone: latest only
    # 7..10 are held; an id of 6 needs exactly those: still a full replay.
    assert history.holds(f"{EPOCH}-6") == 6
    assert seqs(history.resume(f"{EPOCH}-6")) == [7, 8, 9, 10]
    # 5 needs 6, which is gone: the viewer gets the current status, not a gap.
    for gone in (1, 2, 5):
        assert history.holds(f"{EPOCH}-{gone}") is None
        assert seqs(history.resume(f"{EPOCH}-{gone}")) == [10]


def test_after_coalesces_to_the_latest_beyond_the_limit() -> None:
    history = filled(10)
    assert seqs(history.after(7, limit=3)) == [8, 9, 10]  # exactly the limit: all of them
    assert seqs(history.after(6, limit=3)) == [10]  # one more: the latest supersedes
    assert seqs(history.after(6)) == [7, 8, 9, 10]  # no limit: all
    assert history.after(10, limit=3) == []
    assert history.after(11, limit=3) == []


def test_terminal_event_is_kept_and_ends_the_history() -> None:
    history = RunHistory(2, epoch=EPOCH)
    history.append(sse.PROGRESS, status(1))
    history.append(sse.PROGRESS, status(2))
    done = history.append(sse.COMPLETE, status(3, "completed"))
    assert history.terminal and done.terminal
    assert history.latest is done
    with pytest.raises(RuntimeError):
        history.append(sse.PROGRESS, status(4))
    assert history.latest is done
    # Whatever the viewer had, it ends up with the terminal event, once.
    assert history.resume(None) == [done]
    assert history.resume("garbage") == [done]
    assert history.resume(f"{EPOCH}-0") == [done]  # evicted: the terminal, not a gap
    assert seqs(history.resume(f"{EPOCH}-1")) == [2, 3]
    assert history.resume(f"{EPOCH}-2") == [done]
    assert history.resume(f"{EPOCH}-3") == []


def test_error_is_terminal_too() -> None:
    history = RunHistory(4, epoch=EPOCH)
    history.append(sse.ERROR, status(1, "failed"))
    assert history.terminal
    with pytest.raises(RuntimeError):
        history.append(sse.ERROR, status(2, "failed"))


def test_default_epoch_differs_between_histories_made_at_different_times() -> None:
    first = RunHistory(4)
    second = RunHistory(4, epoch=first.epoch + 1)
    assert first.append(sse.PROGRESS, status(1)).id != second.append(sse.PROGRESS, status(1)).id
    assert first.epoch > 1_600_000_000_000  # milliseconds since 1970
