"""The Classifier: which event a status object is sent as."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import sse
from bridge.settings import load
from bridge.status import Classifier, is_terminal

DEFAULT = Classifier("status", frozenset({"completed"}), frozenset({"failed", "cancelled"}))


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ({"status": "completed"}, sse.COMPLETE),
        ({"status": "failed"}, sse.ERROR),
        ({"status": "cancelled"}, sse.ERROR),
        ({"status": "queued"}, sse.PROGRESS),
        ({"status": "running", "progress": 0.5}, sse.PROGRESS),
        ({}, sse.PROGRESS),
        ({"status": None}, sse.PROGRESS),
        ({"status": 1}, sse.PROGRESS),
        ({"status": ["completed"]}, sse.PROGRESS),
        ({"status": {"completed": True}}, sse.PROGRESS),
        ({"status": "COMPLETED"}, sse.PROGRESS),
        ({"status": "completed "}, sse.PROGRESS),
        ({"status": "completed\n"}, sse.PROGRESS),
        ({"status": "completed\x00"}, sse.PROGRESS),
        ({"status": "failed\r\nevent: complete"}, sse.PROGRESS),
        ({"state": "completed"}, sse.PROGRESS),
    ],
)
def test_event_for_default_states(status: dict[str, Any], event: str) -> None:
    assert DEFAULT.event_for(status) == event


def test_event_for_reads_the_configured_field_and_states() -> None:
    settings = load(status_field="state", success_statuses="DONE,ok", failure_statuses="boom")
    classifier = Classifier(
        settings.status_field,
        frozenset(settings.success_statuses),
        frozenset(settings.failure_statuses),
    )
    assert classifier.event_for({"state": "DONE"}) == sse.COMPLETE
    assert classifier.event_for({"state": "ok"}) == sse.COMPLETE
    assert classifier.event_for({"state": "boom"}) == sse.ERROR
    assert classifier.event_for({"state": "completed"}) == sse.PROGRESS
    assert classifier.event_for({"status": "DONE"}) == sse.PROGRESS
    assert classifier.state({"state": 3}) is None
    assert classifier.state({"state": "x"}) == "x"


def test_only_complete_and_error_are_terminal() -> None:
    assert is_terminal(sse.COMPLETE) and is_terminal(sse.ERROR)
    for name in (sse.PROGRESS, sse.PING, sse.TIMEOUT, "completed", "failed", ""):
        assert not is_terminal(name)
