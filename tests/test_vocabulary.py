"""BRIDGE_EVENTS_FILE: the file's checks at start, and the rules' engine (DESIGN.md
"Events that say what happened"), without a server."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from typing import Any

import pytest

from bridge.events import sse
from bridge.events.derive import RunRules
from bridge.events.history import Facts, RunHistory
from bridge.events.vocabulary import Vocabulary, VocabularyError, load
from bridge.ops.metrics import Metrics
from bridge.settings import ConfigError
from bridge.settings import load as load_settings
from bridge.streams.direct import MAX_UNSENT, DirectSink
from bridge.streams.keepalive import Keepalive, StreamLimits

RUNNER = """
[[rule]]
event = "job.started"
items = '.jobs[] | select(.status != "queued") | {runId: $run_id, jobId: .id, job: {name}}'
key = '.jobId'
on = "appear"

[[rule]]
event = "step.log"
items = '''.jobs[] as $j | $j.steps[]
  | {runId: $run_id, jobId: $j.id, stepNumber: .number, text: .log}'''
key = '[.jobId, .stepNumber]'
on = "lines"

[[rule]]
event = "job.changed"
items = '.jobs[] | {jobId: .id, status}'
key = '.jobId'
"""


def vocab(text: str, tmp_path: pathlib.Path, max_per_change: int = 500) -> Vocabulary:
    path = tmp_path / "events.toml"
    path.write_text(text)
    return load(path, max_per_change)


def job(job_id: str, status: str, *logs: str) -> dict[str, Any]:
    steps = [{"number": i + 1, "log": log} for i, log in enumerate(logs)]
    return {"id": job_id, "name": job_id, "status": status, "steps": steps}


def status(*jobs: dict[str, Any], state: str = "in_progress") -> str:
    return sse.encode_json({"status": state, "jobs": list(jobs)})


def named(events: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    return [(name, json.loads(data)) for name, data in events]


# --- the file, at start -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[[rule]\nevent = 1", ["is not valid TOML"]),
        ("[rules]\nx = 1", ["'rules'", "unknown table or key"]),
        ("[builtin.progres]\nenabled = false", ["[builtin.progres]", "unknown built-in"]),
        ("[builtin.progress]\nenable = false", ["[builtin.progress] enable", "unknown key"]),
        ("[builtin.complete]\ndata = '{a:'", ["[builtin.complete] data", "does not compile"]),
        ("[builtin.ping]\nenabled = 'no'", ["[builtin.ping] enabled", "true or false"]),
        ("[[rule]]\nevent = 'x'\nitems = '.[]'\nwhen = 'x'", ["[[rule]] #1 when", "unknown key"]),
        ("[[rule]]\nevent = 'x'\nitems = '.[] |'", ["[[rule]] #1 items", "does not compile"]),
        ("[[rule]]\nevent = 'x'\nitems = '.[]'\nkey = '$nope'", ["[[rule]] #1 key"]),
        ("[[rule]]\nevent = 'x'\nitems = '.[]'\non = 'appears'", ["[[rule]] #1 on", "appear"]),
        ("[[rule]]\nitems = '.[]'", ["[[rule]] #1 event", "missing"]),
        ('[[rule]]\nevent = "a\\nb"\nitems = ".[]"', ["[[rule]] #1 event"]),
    ],
)
def test_a_bad_file_is_one_line_naming_file_table_and_key(
    tmp_path: pathlib.Path, text: str, names: list[str]
) -> None:
    with pytest.raises(VocabularyError) as caught:
        vocab(text, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "events.toml"))
    for name in names:
        assert name in message


def test_settings_refuse_a_bad_file_in_one_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.toml"
    path.write_text("[[rule]]\nevent = 'x'\nitems = '.jobs[] | {'\n")
    monkeypatch.setenv("BRIDGE_EVENTS_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("BRIDGE_EVENTS_FILE")
    assert str(path) in message and "[[rule]] #1 items" in message
    monkeypatch.setenv("BRIDGE_EVENTS_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="BRIDGE_EVENTS_FILE"):
        load_settings()


def test_settings_load_a_good_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "events.toml"
    path.write_text(RUNNER)
    settings = load_settings(events_file=str(path), events_max_per_change=7)
    assert [r.event for r in settings.vocabulary.rules] == [
        "job.started",
        "step.log",
        "job.changed",
    ]
    assert settings.vocabulary.max_per_change == 7
    assert settings.vocabulary.lossless and not settings.vocabulary.from_start
    assert not load_settings().vocabulary.customised


# --- the rules ----------------------------------------------------------------------------


def test_the_first_status_is_compared_with_nothing(tmp_path: pathlib.Path) -> None:
    rules = RunRules(vocab(RUNNER, tmp_path), "r1")
    first = status(job("build", "in_progress", "a\nb\npart"), job("test", "queued"))
    assert named(rules.derive(None, first)) == [
        ("job.started", {"runId": "r1", "jobId": "build", "job": {"name": "build"}}),
        ("step.log", {"runId": "r1", "jobId": "build", "stepNumber": 1, "line": "a"}),
        ("step.log", {"runId": "r1", "jobId": "build", "stepNumber": 1, "line": "b"}),
        ("job.changed", {"jobId": "build", "status": "in_progress"}),
        ("job.changed", {"jobId": "test", "status": "queued"}),
    ]


def test_appear_change_and_lines_between_two_statuses(tmp_path: pathlib.Path) -> None:
    rules = RunRules(vocab(RUNNER, tmp_path), "r1")
    one = status(job("build", "in_progress", "a\nb\npa"), job("test", "queued"))
    two = status(job("build", "completed", "a\nb\npart\nc\n"), job("test", "in_progress", ""))
    rules.derive(None, one)
    assert named(rules.derive(one, two)) == [
        ("job.started", {"runId": "r1", "jobId": "test", "job": {"name": "test"}}),
        ("step.log", {"runId": "r1", "jobId": "build", "stepNumber": 1, "line": "part"}),
        ("step.log", {"runId": "r1", "jobId": "build", "stepNumber": 1, "line": "c"}),
        ("job.changed", {"jobId": "build", "status": "completed"}),
        ("job.changed", {"jobId": "test", "status": "in_progress"}),
    ]
    # Unchanged items make nothing.
    assert rules.derive(two, two) == []


def test_the_previous_items_are_read_again_when_not_at_hand(tmp_path: pathlib.Path) -> None:
    # A new leader, a revived channel: the previous status gives the same answer.
    vocabulary = vocab(RUNNER, tmp_path)
    one = status(job("build", "in_progress", "a\nb\npa"))
    two = status(job("build", "in_progress", "a\nb\npart\nc\n"), job("x", "in_progress"))
    warm = RunRules(vocabulary, "r1")
    warm.derive(None, one)
    cold = RunRules(vocabulary, "r1")
    assert cold.derive(one, two) == warm.derive(one, two)


def test_items_read_again_see_the_previous_statuss_state(tmp_path: pathlib.Path) -> None:
    text = "[[rule]]\nevent = 'm'\nitems = 'select($state == \"running\") | {a: .a}'\n"
    vocabulary = vocab(text, tmp_path)
    warm = RunRules(vocabulary, "r")
    warm.derive(None, '{"a":1}', "running")
    cold = RunRules(vocabulary, "r")
    assert cold.derive('{"a":1}', '{"a":1,"b":2}', "running", before=("running", None)) == []
    assert warm.derive('{"a":1}', '{"a":1,"b":2}', "running") == []


def test_a_text_that_does_not_extend_the_previous_counts_from_its_start(
    tmp_path: pathlib.Path,
) -> None:
    rules = RunRules(vocab(RUNNER, tmp_path), "r")
    one = status(job("b", "in_progress", "old 1\nold 2\n"))
    two = status(job("b", "in_progress", "new 1\n"))
    rules.derive(None, one)
    lines = [json.loads(d)["line"] for n, d in rules.derive(one, two) if n == "step.log"]
    assert lines == ["new 1"]


def test_the_last_line_without_newline_is_sent_at_the_terminal_status(
    tmp_path: pathlib.Path,
) -> None:
    rules = RunRules(vocab(RUNNER, tmp_path), "r")
    one = status(job("b", "in_progress", "x\ntail"))
    two = status(job("b", "completed", "x\ntail"), state="completed")
    rules.derive(None, one)
    lines = [
        json.loads(d)["line"] for n, d in rules.derive(one, two, terminal=True) if n == "step.log"
    ]
    assert lines == ["tail"]


def test_a_log_unchanged_across_changes_keeps_its_place(tmp_path: pathlib.Path) -> None:
    # The log stays "x\npa" through two changes of something else; when it grows, the
    # line it ends with is sent once, whole, and nothing before it again.
    rules = RunRules(vocab(RUNNER, tmp_path), "r")
    one = status(job("b", "in_progress", "x\npa"))
    two = status(job("b", "in_progress", "x\npa"), job("c", "queued"))
    three = status(job("b", "in_progress", "x\npa"), job("c", "in_progress"))
    four = status(job("b", "in_progress", "x\npart\ny\n"), job("c", "in_progress"))
    rules.derive(None, one)
    assert [n for n, _ in rules.derive(one, two)] == ["job.changed"]
    assert [n for n, _ in rules.derive(two, three)] == ["job.started", "job.changed"]
    lines = [json.loads(d)["line"] for n, d in rules.derive(three, four) if n == "step.log"]
    assert lines == ["part", "y"]


def test_lines_cost_what_was_added(tmp_path: pathlib.Path) -> None:
    # Megabytes of log, one line added: one event, and only the added part is split
    # (a regression to splitting the whole text would send every line again).
    rules = RunRules(vocab(RUNNER, tmp_path, max_per_change=100_000), "r")
    big = "".join(f"line {i}\n" for i in range(50_000))
    one = status(job("b", "in_progress", big))
    two = status(job("b", "in_progress", big + "one more\n"))
    assert len(rules.derive(None, one)) == 50_002  # the first status: every line
    assert named(rules.derive(one, two)) == [
        ("step.log", {"runId": "r", "jobId": "b", "stepNumber": 1, "line": "one more"})
    ]


def test_a_rule_without_key_is_about_its_first_item(tmp_path: pathlib.Path) -> None:
    text = "[[rule]]\nevent = 'phase_changed'\nitems = '{phase: .phase}, {phase: 0}'\n"
    rules = RunRules(vocab(text, tmp_path), "r")
    assert named(rules.derive(None, '{"phase":"a"}')) == [("phase_changed", {"phase": "a"})]
    assert rules.derive('{"phase":"a"}', '{"phase":"a","x":1}') == []
    assert named(rules.derive('{"phase":"a","x":1}', '{"phase":"b"}')) == [
        ("phase_changed", {"phase": "b"})
    ]


def test_variables_are_bound(tmp_path: pathlib.Path) -> None:
    text = "[[rule]]\nevent = 'm'\nitems = '{r: $run_id, s: $state, p: $progress}'\n"
    rules = RunRules(vocab(text, tmp_path), "run-9")
    assert named(rules.derive(None, "{}", "running", 0.5)) == [
        ("m", {"r": "run-9", "s": "running", "p": 0.5})
    ]


def test_a_failing_rule_yields_nothing_is_logged_once_and_the_others_go_on(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        "[[rule]]\nevent = 'bad'\nitems = '.n | error(\"secret value\")'\n"
        "[[rule]]\nevent = 'good'\nitems = '{n: .n}'\n"
    )
    metrics = Metrics()
    rules = RunRules(vocab(text, tmp_path), "r", metrics)
    with caplog.at_level(logging.WARNING, "bridge.events"):
        assert named(rules.derive(None, '{"n":1}')) == [("good", {"n": 1})]
        assert named(rules.derive('{"n":1}', '{"n":2}')) == [("good", {"n": 2})]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "[[rule]] #1" in warnings[0] and "r" in warnings[0]
    assert "secret value" not in warnings[0]
    assert metrics.rule_failures.labels("bad")._value.get() == 2


def test_too_many_events_are_cut_logged_once_and_counted(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "[[rule]]\nevent = 'n'\nitems = '.[] | {n: .}'\nkey = '.n'\non = 'appear'\n"
    metrics = Metrics()
    rules = RunRules(vocab(text, tmp_path, max_per_change=3), "r", metrics)
    with caplog.at_level(logging.WARNING, "bridge.events"):
        assert len(rules.derive(None, "[1,2,3,4,5]")) == 3
        assert len(rules.derive("[1,2,3,4,5]", "[6,7,8,9]")) == 3
    assert len(caplog.records) == 1 and "BRIDGE_EVENTS_MAX_PER_CHANGE" in caplog.text
    assert metrics.events_cut._value.get() == 2


def test_builtin_events_are_renamed_reshaped_and_turned_off(tmp_path: pathlib.Path) -> None:
    text = """
[builtin.progress]
enabled = false
[builtin.complete]
event = "run.completed"
data = '{runId: $run_id, run: {status: .status, conclusion: .conclusion}, s: $state}'
[builtin.ping]
data = '{}'
"""
    vocabulary = vocab(text, tmp_path)
    assert not vocabulary.enabled("progress") and vocabulary.from_start and vocabulary.lossless
    assert vocabulary.name_of("complete") == "run.completed"
    shaped = vocabulary.render("complete", '{"status":"completed","conclusion":"ok"}', "r", "x", 1)
    assert shaped is not None
    assert json.loads(shaped) == {
        "runId": "r",
        "run": {"status": "completed", "conclusion": "ok"},
        "s": "x",
    }
    assert vocabulary.render("error", "{}", "r", None, None) is None  # unchanged
    assert vocabulary.event_names() == ["run.completed", "error", "timeout", "ping"]


def test_a_message_event_is_unnamed() -> None:
    assert sse.frame("message", "{}", "1-1") == b"id: 1-1\ndata: {}\n\n"


# --- the history, with a vocabulary ---------------------------------------------------------


def off(tmp_path: pathlib.Path) -> Vocabulary:
    return vocab(
        "[builtin.progress]\nenabled = false\n[[rule]]\nevent = 'n'\nitems = '.'\n", tmp_path
    )


def test_with_progress_off_a_viewer_without_id_gets_the_history_from_the_start(
    tmp_path: pathlib.Path,
) -> None:
    history = RunHistory(100, 1 << 20, epoch=5, vocabulary=off(tmp_path))
    history.append("n", '{"a":1}', Facts(kind=""))
    history.append("progress", '{"a":1}', Facts(hidden=True))
    history.append("n", '{"a":2}', Facts(kind=""))
    history.append("progress", '{"a":2}', Facts(hidden=True))
    events = history.resume(None)
    assert [(e.name, e.sent) for e in events] == [
        ("n", True),
        ("progress", False),
        ("n", True),
        ("progress", False),
    ]
    # An id history no longer holds: the current status as a `progress` event.
    (current,) = history.resume("5-999")
    assert current.sent and current.name == "progress" and current.data == '{"a":2}'
    assert current.id == "5-4"
    # No coalescing of events that are not snapshots.
    assert len(history.after(0, limit=1)) == 4


def test_a_trimmed_resume_id_gets_the_current_status_even_with_progress_off(
    tmp_path: pathlib.Path,
) -> None:
    history = RunHistory(2, 1 << 20, epoch=5, vocabulary=off(tmp_path))
    for i in range(3):
        history.append("n", f'{{"a":{i}}}', Facts(kind=""))
        history.append("progress", f'{{"a":{i}}}', Facts(hidden=True))
    (current,) = history.after(1)
    assert current.name == "progress" and current.data == '{"a":2}' and current.sent
    assert history.status is not None and history.status.status == '{"a":2}'


# --- slow viewers ---------------------------------------------------------------------------


class FullTransport(asyncio.WriteTransport):
    """A viewer's socket that takes nothing more: everything written stays unsent."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return MAX_UNSENT + 1


async def test_a_slow_fast_path_viewer_of_derived_events_is_ended_not_skipped(
    tmp_path: pathlib.Path,
) -> None:
    history = RunHistory(100, 1 << 20, epoch=5, vocabulary=off(tmp_path))
    limits = StreamLimits(ping_interval=15, stream_timeout=60, viewer_buffer=8, retry_ms=1000)
    transport = FullTransport()
    sink = DirectSink(transport, 0, Keepalive(limits))
    sink.lossless = sse.retry(1000)
    sink.deliver(history.append("n", '{"a":1}', Facts(kind="")))
    # Ended with a retry: it resumes after the last event it was written (none here).
    assert sink.ended.done() and sink.ended.result() == "behind"
    assert transport.written == [sse.chunk(sse.retry(1000))]
    assert sink.cursor == 0 and sink.behind_since is None


async def test_a_slow_fast_path_viewer_of_snapshots_is_still_coalesced() -> None:
    history = RunHistory(100, 1 << 20, epoch=5)
    limits = StreamLimits(ping_interval=15, stream_timeout=60, viewer_buffer=8, retry_ms=1000)
    sink = DirectSink(FullTransport(), 0, Keepalive(limits))
    sink.deliver(history.append(sse.PROGRESS, '{"a":1}'))
    assert not sink.ended.done() and sink.behind_since is not None


async def test_ping_and_timeout_follow_the_vocabulary(tmp_path: pathlib.Path) -> None:
    text = "[builtin.ping]\ndata = '{}'\n[builtin.timeout]\nevent = 'bye'\n"
    limits = StreamLimits(15, 60, 8, 1000, vocab(text, tmp_path))
    keepalive = Keepalive(limits)
    assert keepalive.frame("ping") == b"event: ping\ndata: {}\n\n"
    assert keepalive.frame("timeout") == (
        b'event: bye\ndata: {"message":"Stream timeout after 1 minute"}\n\n'
    )
    quiet = Keepalive(
        StreamLimits(15, 60, 8, 1000, vocab("[builtin.ping]\nenabled = false\n", tmp_path))
    )
    # Turned off, a ping is a comment: proxies still see the stream alive, clients no event.
    assert quiet.frame("ping") == b": ping\n\n"


def test_openapi_names_the_configured_events(tmp_path: pathlib.Path) -> None:
    from bridge.web.openapi import build_document

    path = tmp_path / "events.toml"
    path.write_text(RUNNER + "\n[builtin.progress]\nenabled = false\n")
    document = build_document(load_settings(events_file=str(path)))
    names = document["info"]["x-events"]["names"]
    assert names == [
        "complete",
        "error",
        "timeout",
        "ping",
        "job.started",
        "step.log",
        "job.changed",
    ]
    event = document["components"]["schemas"]["RunEvent"]["properties"]["event"]
    assert event["enum"] == [*names, "patch"]
    stream = document["paths"]["/v1/runs/{run_id}/stream"]["get"]
    assert {"$ref": "#/components/parameters/Delta"} in stream["parameters"]
    assert build_document(load_settings())["info"]["x-events"]["names"] == [
        "progress",
        "complete",
        "error",
        "timeout",
        "ping",
    ]


def test_a_crlf_log_gives_lines_without_their_carriage_return(tmp_path: pathlib.Path) -> None:
    rules = RunRules(vocab(RUNNER, tmp_path), "r")
    lines = [
        json.loads(d)["line"]
        for n, d in rules.derive(None, status(job("b", "in_progress", "one\r\ntwo\r\n")))
        if n == "step.log"
    ]
    assert lines == ["one", "two"]


def test_the_rule_state_is_let_go_at_the_final_status(tmp_path: pathlib.Path) -> None:
    # An ended run waits in the hub's cache for reconnects: its previous items (as big as
    # a status) are not kept with it.
    from bridge.events import derive
    from bridge.events.channel import Channel, ChannelKey
    from bridge.polling.status import StatusReader

    reader = StatusReader(state_expr=".status", success=["completed"], failure=["failed"])
    channel = Channel(
        ChannelKey("r", "-"), RunHistory(100, 1 << 20, vocabulary=vocab(RUNNER, tmp_path))
    )
    for text in (
        status(job("b", "in_progress", "x\n")),
        status(job("b", "completed", "x\ny"), state="completed"),
    ):
        derive.publish(channel, text, reader.read(json.loads(text), text))
        if json.loads(text)["status"] == "in_progress":
            assert channel in derive._RULES
    assert channel not in derive._RULES
    assert channel.history.terminal
