"""A channel's fan-out: every viewer gets every event once and in order, a slice of
viewers per turn of the event loop (so nothing else waits for 10,000 writes), and
nothing is left unwritten when the channel's viewers are closed."""

from __future__ import annotations

import asyncio

from bridge.events.channel import FANOUT_SLICE, MAX_BACKLOG, Channel, ChannelKey, Subscription
from bridge.events.history import Event, RunHistory, http_chunk
from bridge.streams.direct import DirectSink
from bridge.streams.keepalive import Keepalive, StreamLimits
from tests.support import wait_for

LIMITS = StreamLimits(ping_interval=15, stream_timeout=3600, viewer_buffer=64, retry_ms=1000)


class Recorder:
    """A fast-path sink that records what it was given, and when (a shared clock)."""

    def __init__(self, clock: list[str]) -> None:
        self.clock = clock
        self.seqs: list[int] = []
        self.finished: str | None = None

    def deliver(self, event: Event) -> None:
        self.seqs.append(event.seq)
        self.clock.append("deliver")

    def finish(self, why: str) -> None:
        self.finished = why

    def write(self, data: bytes) -> None:
        pass


def channel_with(viewers: int) -> tuple[Channel, list[Recorder], list[str]]:
    channel = Channel(ChannelKey("run", "creds"), RunHistory(16, 1 << 20))
    clock: list[str] = []
    sinks = []
    for _ in range(viewers):
        subscription = Subscription(channel)
        sink = Recorder(clock)
        subscription.sink = sink
        channel.add(subscription)
        sinks.append(sink)
    return channel, sinks, clock


async def test_a_small_channel_is_written_at_once() -> None:
    channel, sinks, _ = channel_with(FANOUT_SLICE)
    event = channel.publish("progress", "{}")
    assert all(s.seqs == [event.seq] for s in sinks)
    assert not channel.fanning_out


async def test_a_large_fan_out_gives_the_loop_a_turn_between_slices() -> None:
    viewers = FANOUT_SLICE * 2 + 500
    channel, sinks, clock = channel_with(viewers)
    loop = asyncio.get_running_loop()
    loop.call_soon(clock.append, "other work")
    event = channel.publish("progress", "{}")
    # The first slice went out at once; the rest waits for later turns of the loop.
    assert sum(1 for s in sinks if s.seqs) == FANOUT_SLICE
    assert channel.fanning_out
    await wait_for(lambda: not channel.fanning_out, timeout=5)
    assert all(s.seqs == [event.seq] for s in sinks)
    # The work that was ready came between the first slice and the second.
    assert clock.index("other work") == FANOUT_SLICE


async def test_events_published_during_a_fan_out_follow_in_order() -> None:
    channel, sinks, _ = channel_with(FANOUT_SLICE * 3)
    first = channel.publish("progress", '{"n":1}')
    second = channel.publish("progress", '{"n":2}')
    # A viewer who arrives now read both from the history: it is not in either fan-out.
    late = Recorder([])
    subscription = Subscription(channel)
    subscription.sink = late
    channel.add(subscription)
    third = channel.publish("complete", '{"n":3}')
    await wait_for(lambda: not channel.fanning_out, timeout=5)
    assert all(s.seqs == [first.seq, second.seq, third.seq] for s in sinks)
    assert late.seqs == [third.seq]


async def test_closing_the_channel_writes_the_backlog_first() -> None:
    channel, sinks, _ = channel_with(FANOUT_SLICE * 2)
    event = channel.publish("progress", "{}")
    assert channel.fanning_out
    channel.close_all()
    assert not channel.fanning_out
    assert all(s.seqs == [event.seq] and s.finished == "closed" for s in sinks)


async def test_the_backlog_is_bounded_and_loses_nothing() -> None:
    channel, sinks, _ = channel_with(FANOUT_SLICE + 1)
    # A loop that never comes back (no await here) does not let events pile up.
    events = [channel.publish("progress", f'{{"n":{i}}}') for i in range(MAX_BACKLOG + 1)]
    assert not channel.fanning_out
    assert all(s.seqs == [e.seq for e in events] for s in sinks)


class WriteLog(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def test_a_viewer_handed_over_during_a_fan_out_gets_each_event_once() -> None:
    """The hand-over to the fast path writes what the history has after the viewer's
    cursor; the channel's fan-out, reaching that viewer a slice later, must not write
    the same event again."""
    channel, _, _ = channel_with(FANOUT_SLICE)
    waiting = Subscription(channel)
    channel.add(waiting)
    event = channel.publish("progress", "{}")
    assert channel.fanning_out
    transport = WriteLog()
    sink = DirectSink(transport, 0, Keepalive(LIMITS))
    for missed in channel.history.after(0):
        sink.deliver(missed)
    waiting.sink = sink
    await wait_for(lambda: not channel.fanning_out, timeout=5)
    assert transport.writes == [http_chunk(event)]
