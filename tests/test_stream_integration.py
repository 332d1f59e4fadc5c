from __future__ import annotations

import json

from bridge.demo.legacy_api import LegacyApi
from tests.support import running_bridge, sse


async def test_progressing_run_exact_sequence(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=("a", "b"), outcome="completed")
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/runs/r1/stream") as s:
        assert s.status == 200
        assert s.response.headers["Content-Type"].startswith("text/event-stream")
        first = await s.next_event()
        assert (first.event, json.loads(first.data)) == ("progress", run.statuses[0])
        for expected in run.statuses[1:]:
            run.advance()
            event = await s.next_named("progress", "complete")
            assert json.loads(event.data) == expected
        assert event.event == "complete"
        assert await s.rest() == []
        assert s.raw.startswith(b"retry: ")
