"""RunHistory: ids, resume after an id, what an unknown or evicted id gets, and the bound
in bytes (one copy of each event's bytes, trimmed oldest first, the newest always kept)."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Callable

import pytest

from bridge.events import sse
from bridge.events.history import EVENT_OVERHEAD, Event, RunHistory, http_chunk, parse_id
from bridge.tools.eventstream import EventStreamParser

EPOCH = 1_700_000_000_000
MiB = 1 << 20
#: Roomy enough that the byte bound never trims the small events of the count tests.
ROOMY = 64 * MiB


def status(n: int, state: str = "running") -> str:
    """A status as the pollers hand it to the history: encoded once."""
    return sse.encode_json({"id": "r1", "status": state, "progress": n / 100})


def big_status(n: int, size: int, state: str = "running") -> str:
    """A status of about ``size`` bytes of JSON, different for every ``n``."""
    return sse.encode_json({"id": "r1", "status": state, "n": n, "blob": f"{n:08d}" * (size // 8)})


def filled(count: int, size: int = 256) -> RunHistory:
    history = RunHistory(size, ROOMY, epoch=EPOCH)
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
    history = RunHistory(4, ROOMY, epoch=EPOCH)
    event = history.append(sse.PROGRESS, status(1))
    assert type(event.frame) is bytes  # an ASGI body chunk as it is
    (parsed,) = EventStreamParser().feed(event.frame)
    assert (parsed.event, parsed.id) == ("progress", event.id)
    assert parsed.data == status(1) == event.data
    assert json.loads(event.data) == json.loads(status(1))


def test_data_comes_back_exactly_whatever_it_holds() -> None:
    history = RunHistory(8, ROOMY, epoch=EPOCH)
    for data in ('{"a":"data: x"}', '{"event: y":"id: 1"}', '{"s":"\u00e9 \u2028"}', "{}"):
        assert history.append(sse.PROGRESS, data).data == data
    # A mirrored record is text another replica wrote; non-ASCII survives too.
    copy = RunHistory(8, ROOMY)
    assert copy.mirror(5, 1, sse.PROGRESS, '{"s":"\u00e9"}') is not None
    assert copy.latest is not None and copy.latest.data == '{"s":"\u00e9"}'


def test_an_event_holds_one_copy_of_its_bytes() -> None:
    # Not the parsed status, not the data apart from the frame, not a chunk-framed copy:
    # beside the frame, only small scalars (the state is at most 256 characters, the
    # detail 200), and the status apart only where the frame does not carry it
    # (reshaped or turned off).
    assert Event.__slots__ == (
        "seq",
        "id",
        "name",
        "frame",
        "data_at",
        "state",
        "progress",
        "detail",
        "kind",
        "raw",
    )
    history = RunHistory(4, ROOMY, epoch=EPOCH)
    event = history.append(sse.PROGRESS, big_status(1, 100_000))
    assert event.raw is None
    assert event.nbytes == len(event.frame) + EVENT_OVERHEAD == history.nbytes


def test_the_http_chunk_is_made_once_per_event_and_shared() -> None:
    history = RunHistory(4, ROOMY, epoch=EPOCH)
    first = history.append(sse.PROGRESS, status(1))
    chunk = http_chunk(first)
    assert chunk == sse.chunk(first.frame)
    # Every viewer of a fan-out writes the same bytes object, not a copy each.
    assert http_chunk(first) is chunk
    second = history.append(sse.PROGRESS, status(2))
    assert http_chunk(second) == sse.chunk(second.frame)
    assert http_chunk(first) == chunk  # an older event still gets its own chunk


def test_two_histories_of_a_run_do_not_share_ids() -> None:
    old = RunHistory(8, ROOMY, epoch=EPOCH)
    new = RunHistory(8, ROOMY, epoch=EPOCH + 1)
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
    history = RunHistory(4, ROOMY, epoch=EPOCH)
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
    history = RunHistory(2, ROOMY, epoch=EPOCH)
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
    history = RunHistory(4, ROOMY, epoch=EPOCH)
    history.append(sse.ERROR, status(1, "failed"))
    assert history.terminal
    with pytest.raises(RuntimeError):
        history.append(sse.ERROR, status(2, "failed"))


def test_default_epoch_differs_between_histories_made_at_different_times() -> None:
    first = RunHistory(4, ROOMY)
    second = RunHistory(4, ROOMY, epoch=first.epoch + 1)
    assert first.append(sse.PROGRESS, status(1)).id != second.append(sse.PROGRESS, status(1)).id
    assert first.epoch > 1_600_000_000_000  # milliseconds since 1970


# --- the bound in bytes ------------------------------------------------------------------


def held(history: RunHistory) -> list[Event]:
    """Every event the history holds (``after`` of the seq just before the oldest)."""
    latest = history.latest
    return [] if latest is None else history.after(latest.seq - len(history))


def retained_by(make: Callable[[], RunHistory]) -> tuple[int, int]:
    """The byte count of the history ``make()`` fills, and what it really holds by
    tracemalloc's count: the memory freed when it is dropped (so nothing the caller's
    temporaries held is counted, and nothing the history holds is missed)."""
    gc.collect()
    tracemalloc.start()
    try:
        history = make()
        gc.collect()
        with_it = tracemalloc.get_traced_memory()[0]
        counted = history.nbytes
        del history
        gc.collect()
        without = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return counted, with_it - without


def test_many_large_events_stay_within_the_byte_bound() -> None:
    limit, event_size = MiB, 100_000
    seen: list[tuple[int, int]] = []

    def make() -> RunHistory:
        history = RunHistory(256, limit, epoch=EPOCH)
        for n in range(1, 201):
            history.append(sse.PROGRESS, big_status(n, event_size))
            seen.append((len(history), history.nbytes))
            # The accounting is the sum of what is held, and under the limit.
            assert history.nbytes == sum(e.nbytes for e in held(history))
            assert history.nbytes <= limit
        return history

    counted, retained = retained_by(make)
    # About ten 100 KB events fit in 1 MiB; 200 were appended.
    assert max(count for count, _ in seen) == 10
    one_event = event_size + 1024
    # Measured independently: the history holds no second copy of anything (each event
    # held twice would be about 2 MiB here), and EVENT_OVERHEAD covers the rest.
    assert retained <= limit + one_event + 4096
    assert retained <= counted + 4096
    assert retained >= counted - 10 * EVENT_OVERHEAD


def test_event_overhead_covers_what_an_event_really_costs() -> None:
    count = 2000

    def make() -> RunHistory:
        history = RunHistory(count, ROOMY, epoch=EPOCH)
        for n in range(1, count + 1):
            history.append(sse.PROGRESS, status(n))
        return history

    counted, retained = retained_by(make)
    frames = counted - count * EVENT_OVERHEAD
    per_event = (retained - frames) / count
    assert per_event <= EVENT_OVERHEAD, per_event
    assert per_event >= EVENT_OVERHEAD / 2, per_event  # not grossly over-counted either


def test_the_newest_event_is_kept_even_alone_over_the_limit() -> None:
    history = RunHistory(8, 64 * 1024, epoch=EPOCH)
    for n in range(1, 4):
        history.append(sse.PROGRESS, status(n))
    big = history.append(sse.PROGRESS, big_status(4, 200_000))
    assert held(history) == [big] and history.nbytes == big.nbytes > history.max_bytes
    done = history.append(sse.COMPLETE, big_status(5, 300_000, "completed"))
    assert history.terminal and history.latest is done and len(history) == 1
    assert history.nbytes == done.nbytes > history.max_bytes
    assert history.resume(None) == [done]
    assert history.resume(big.id) == [done]
    assert history.resume(f"{EPOCH}-1") == [done]


def test_small_events_after_a_big_one_push_it_out() -> None:
    history = RunHistory(256, 64 * 1024, epoch=EPOCH)
    history.append(sse.PROGRESS, big_status(1, 200_000))
    second = history.append(sse.PROGRESS, status(2))
    assert held(history) == [second]
    assert history.nbytes == second.nbytes


def test_resume_across_a_trimmed_part_gets_the_current_status() -> None:
    history = RunHistory(256, MiB, epoch=EPOCH)
    events = [history.append(sse.PROGRESS, big_status(n, 100_000)) for n in range(1, 41)]
    # Ids keep increasing through the trimming: never reused, never reset.
    assert [e.seq for e in events] == list(range(1, 41))
    assert [parse_id(e.id) for e in events] == [(EPOCH, n) for n in range(1, 41)]
    kept = held(history)
    oldest = kept[0].seq
    assert oldest > 1 and kept[-1] is events[-1] and seqs(kept) == list(range(oldest, 41))
    assert history.nbytes <= history.max_bytes
    # Trimmed: the viewer gets the current status, not a gap.
    for gone in (1, oldest - 2):
        assert history.holds(f"{EPOCH}-{gone}") is None
        assert history.resume(f"{EPOCH}-{gone}") == [events[-1]]
    # Just before the oldest held, or later: everything after it, exactly.
    assert seqs(history.resume(f"{EPOCH}-{oldest - 1}")) == list(range(oldest, 41))
    assert seqs(history.resume(f"{EPOCH}-38")) == [39, 40]
    nxt = history.append(sse.PROGRESS, big_status(41, 100_000))
    assert nxt.seq == 41 and nxt.id == f"{EPOCH}-41"


def test_a_mirrored_gap_resets_the_byte_count() -> None:
    copy = RunHistory(256, MiB)
    copy.mirror(9, 1, sse.PROGRESS, big_status(1, 100_000))
    copy.mirror(9, 2, sse.PROGRESS, big_status(2, 100_000))
    after_gap = copy.mirror(9, 7, sse.PROGRESS, status(7))
    assert after_gap is not None and held(copy) == [after_gap]
    assert copy.nbytes == after_gap.nbytes


def test_a_history_holds_at_least_one_event() -> None:
    with pytest.raises(ValueError):
        RunHistory(0, MiB)
