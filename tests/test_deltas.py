"""Deltas (DESIGN.md "Deltas"): ``delta=json-patch`` through the real bridge against the
simulated API; each patch applied to the previous status gives the next one."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import pytest

from bridge.demo.legacy_api import LegacyApi
from bridge.events import delta as delta_module
from tests.support import running_bridge, sse


def statuses(run_id: str, count: int) -> list[dict[str, Any]]:
    nodes = [{"id": f"n{i}", "status": "pending", "log": "x" * 50} for i in range(20)]
    out = []
    for step in range(count):
        nodes = [dict(n) for n in nodes]
        nodes[step]["status"] = "running"
        last = step == count - 1
        out.append({"id": run_id, "status": "completed" if last else "running", "nodes": nodes})
    return out


async def test_a_delta_viewer_gets_the_whole_status_then_patches(
    legacy: LegacyApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = []
    real = jsonpatch.make_patch

    def counting(before: Any, after: Any) -> Any:
        made.append(1)
        return real(before, after)

    monkeypatch.setattr(delta_module.jsonpatch, "make_patch", counting)
    run = legacy.scripted("d1", statuses("d1", 5))
    async with running_bridge(legacy.url) as b:
        url = f"{b.url}/v1/runs/d1/stream?delta=json-patch"
        async with sse(url) as one, sse(url) as two, sse(f"{b.url}/v1/runs/d1/stream") as plain:
            first = await one.next_named("progress")
            assert json.loads(first.data) == run.statuses[0]
            await two.next_named("progress")
            await plain.next_named("progress")
            current = run.statuses[0]
            for index in range(1, 4):
                run.advance()
                patch = await one.next_named("patch")
                assert (await two.next_named("patch")).data == patch.data
                whole = await plain.next_named("progress")
                assert patch.id == whole.id
                operations = json.loads(patch.data)
                current = jsonpatch.apply_patch(current, operations)
                assert current == run.statuses[index]
                # One node changed: the patch is a small part of the whole status.
                assert len(patch.data) < len(whole.data) / 10
            run.advance()
            end = await one.next_named("complete")
            assert json.loads(end.data) == run.statuses[-1]
        # Once per change for both viewers.
        assert len(made) == 3
        # Resuming from an id history holds: the patches after it; otherwise whole first.
        async with sse(f"{url}&cursor={first.id}") as resumed:
            names = [e.event for e in await resumed.rest()]
            assert names == ["patch", "patch", "patch", "complete"]
        async with sse(f"{url}&cursor=1-1") as lost:
            assert [e.event for e in await lost.rest()] == ["complete"]


async def test_multi_stream_envelopes_take_the_delta_parameter(legacy: LegacyApi) -> None:
    run = legacy.scripted("d2", statuses("d2", 3))
    async with running_bridge(legacy.url) as b:
        async with sse(f"{b.url}/v1/streams?runs=d2&delta=json-patch") as s:
            first = json.loads((await s.next_named("progress")).data)
            run.advance()
            patch = await s.next_named("patch")
            envelope = json.loads(patch.data)
            assert envelope["run_id"] == "d2" and envelope["state"] == "running"
            assert jsonpatch.apply_patch(first["data"], envelope["data"]) == run.statuses[1]
