"""DESIGN.md "Feeds and fleets", read as a black-box tester reads it: each bullet through
the real bridge (Hypercorn on loopback) against an aiohttp upstream on loopback."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import aiohttp

from tests.feed_upstream import SEED_002, feed_upstream, list_upstream
from tests.support import running_bridge, sse

AUTH = {"Authorization": "Bearer alice"}
LIST = {"upstream_list_path": "/runs"}


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None)


async def test_a_feed_item_names_its_event_by_event_type_then_type_else_message() -> None:
    async with feed_upstream() as up:
        run = up.run("n1")
        run.add("PHASE_STARTED")
        run.events.append({"sequence": 2, "type": "token"})
        run.events.append({"sequence": 3, "text": "hello"})
        async with (
            running_bridge(up.url, **SEED_002) as b,
            sse(f"{b.url}/v1/runs/n1/stream", AUTH) as s,
        ):
            got = [await s.next_event() for _ in range(3)]
            raw = bytes(s.raw).decode()
        assert [(e.event, e.id) for e in got] == [
            ("PHASE_STARTED", "1"),
            ("token", "2"),
            ("message", "3"),
        ]
        # BRIDGE_FEED_DATA's default `.`: the item itself.
        assert json.loads(got[2].data) == {"sequence": 3, "text": "hello"}
        # `message` is what EventSource.onmessage receives: no event line needed, and
        # none that names it otherwise.
        frame = raw[raw.index("id: 3") - 40 :]
        assert "event: token" in raw and "event: PHASE_STARTED" in raw
        assert "hello" in frame


async def test_a_feed_resumes_by_the_cursor_query_parameter_too() -> None:
    async with feed_upstream() as up:
        run = up.run("n2")
        for i in range(6):
            run.add("STEP", n=i + 1)
        async with running_bridge(up.url, **SEED_002, history_size=2) as b:
            async with sse(f"{b.url}/v1/runs/n2/stream?cursor=3", AUTH) as s:
                ids = [(await s.next_named("STEP")).id for _ in range(3)]
                assert ids == ["4", "5", "6"]
            async with sse(f"{b.url}/v1/runs/n2/stream?since=5", AUTH) as s:
                assert (await s.next_named("STEP")).id == "6"
                run.add("STEP", n=7)
                assert (await s.next_named("STEP")).id == "7"


async def test_a_feed_start_other_than_zero_is_the_first_cursor_asked() -> None:
    async with feed_upstream() as up:
        run = up.run("n4")
        for i in range(4):
            run.add("STEP", n=i + 1)
        async with (
            running_bridge(up.url, **SEED_002, feed_start="2") as b,
            sse(f"{b.url}/v1/runs/n4/stream", AUTH) as s,
        ):
            assert [(await s.next_named("STEP")).id for _ in range(2)] == ["3", "4"]
        assert up.feed_requests("n4")[0][1] == "2"


async def test_a_fleet_carries_derived_events_in_envelopes_and_raw(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "events.toml"
    path.write_text(
        "[[rule]]\nevent = 'job.started'\n"
        "items = '.jobs[] | {runId: $run_id, jobId: .}'\nkey = '.jobId'\non = 'appear'\n"
    )
    async with list_upstream() as up:
        up.set("a", "running", jobs=[])
        async with running_bridge(up.url, **LIST, events_file=str(path)) as b:
            async with (
                sse(f"{b.url}/v1/events", AUTH) as wrapped,
                sse(f"{b.url}/v1/events?envelope=0", AUTH) as raw,
            ):
                assert wrapped.data(await wrapped.next_named("progress"))["run_id"] == "a"
                assert raw.data(await raw.next_named("progress")) == up.statuses["a"]
                up.set("a", "running", jobs=["build"])
                started = await wrapped.next_named("job.started")
                envelope = wrapped.data(started)
                assert envelope["run_id"] == "a" and envelope["state"] == "running"
                assert envelope["data"] == {"runId": "a", "jobId": "build"}
                assert (await wrapped.next_named("progress")).id
                plain = await raw.next_named("job.started")
                assert raw.data(plain) == {"runId": "a", "jobId": "build"}
                assert raw.data(await raw.next_named("progress")) == up.statuses["a"]
                up.set("a", "completed", jobs=["build"])
                end = await wrapped.next_named("complete")
                assert wrapped.data(end)["data"] == up.statuses["a"]
                assert raw.data(await raw.next_named("complete")) == up.statuses["a"]


async def test_v1_events_refused_by_the_list_is_the_error_json() -> None:
    async with list_upstream() as up, running_bridge(up.url, **LIST) as b:
        status, body = await get_json(f"{b.url}/v1/events", {"Authorization": "Bearer nope"})
        assert status == 401
        assert set(body) == {"error", "message"}
        assert isinstance(body["error"], str) and isinstance(body["message"], str)


async def test_feed_items_named_like_built_in_events_are_items_not_ends() -> None:
    """Seed 002's frames include `type: "error"`: an item so named is one event like any
    other; only the run's final state ends the stream."""
    async with feed_upstream() as up:
        run = up.run("n5")
        run.events.append({"sequence": 1, "type": "error", "message": "retrying"})
        run.events.append({"sequence": 2, "type": "complete", "step": "fetch"})
        run.events.append({"sequence": 3, "type": "progress", "pct": 10})
        async with running_bridge(up.url, **SEED_002) as b:
            url = f"{b.url}/v1/runs/n5/stream"
            async with sse(url, AUTH) as s, sse(f"{url}?delta=json-patch", AUTH) as d:
                got = [await s.next_event() for _ in range(3)]
                assert [(e.event, e.id) for e in got] == [
                    ("error", "1"),
                    ("complete", "2"),
                    ("progress", "3"),
                ]
                run.add("STEP", n=4)
                assert (await s.next_named("STEP")).id == "4"
                run.events.append({"sequence": 5, "type": "progress", "pct": 50})
                assert s.data(await s.next_named("progress")) == run.events[-1]
                run.status = "completed"
                end = await s.next_named("complete")
                assert s.data(end)["runStatus"] == "completed"
                assert await s.rest() == []
                # A feed has no statuses to patch: items are sent as they are.
                assert [e.event for e in await d.rest()] == [
                    "error",
                    "complete",
                    "progress",
                    "STEP",
                    "progress",
                    "complete",
                ]
            async with sse(f"{b.url}/v1/streams?runs=n5&delta=json-patch", AUTH) as m:
                names = [e.event for e in await m.rest()]
                assert "patch" not in names and names[-1] == "complete"


async def test_a_feeds_result_says_progress_until_its_end() -> None:
    async with feed_upstream() as up:
        run = up.run("n6")
        run.add("STEP", n=1)
        async with running_bridge(up.url, **SEED_002) as b:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{b.url}/v1/runs/n6/result", headers=AUTH) as r:
                    assert r.status == 202
                    assert r.headers["X-Run-Event"] == "progress"
                    assert r.headers["X-Run-State"] == "running"
                run.status = "failed"
                async with http.get(f"{b.url}/v1/runs/n6/result?wait=10", headers=AUTH) as r:
                    assert r.status == 200
                    assert r.headers["X-Run-Event"] == "error"
                    assert (await r.json())["runStatus"] == "failed"


async def test_v1_events_envelopes_take_the_delta_parameter() -> None:
    """DESIGN "Deltas": a stream's query; /v1/events sends /v1/streams envelopes."""
    async with list_upstream() as up:
        up.set("a", "running", n=1, keep="x" * 40)
        up.set("b", "running", n=1)
        async with running_bridge(up.url, **LIST) as b:
            url = f"{b.url}/v1/events?delta=json-patch"
            async with sse(url, AUTH) as s, sse(f"{b.url}/v1/events", AUTH) as plain:
                whole = {}
                for _ in range(2):
                    envelope = s.data(await s.next_named("progress"))
                    whole[envelope["run_id"]] = envelope["data"]
                    await plain.next_named("progress")
                assert whole == {"a": up.statuses["a"], "b": up.statuses["b"]}
                up.set("a", "running", n=2, keep="x" * 40)
                patch = await s.next_named("patch")
                envelope = s.data(patch)
                assert (envelope["run_id"], envelope["state"]) == ("a", "running")
                assert envelope["data"] == [{"op": "replace", "path": "/n", "value": 2}]
                same = await plain.next_named("progress")
                assert patch.id == same.id and plain.data(same)["id"] == envelope["id"]
                # Resuming from an id the stream holds: the patches after it.
                up.set("a", "running", n=3, keep="x" * 40)
                await plain.next_named("progress")
                await s.next_named("patch")
                async with sse(url, {**AUTH, "Last-Event-ID": patch.id}) as again:
                    resumed = again.data(await again.next_named("patch"))
                    assert resumed["data"] == [{"op": "replace", "path": "/n", "value": 3}]
                up.set("a", "completed", n=4, keep="x" * 40)
                end = s.data(await s.next_named("complete"))
                assert end["data"] == up.statuses["a"]
            # envelope=0 sends data exactly as the run's own stream: whole statuses.
            async with sse(f"{url}&envelope=0", AUTH) as raw:
                assert raw.data(await raw.next_named("complete")) == up.statuses["a"]
                assert raw.data(await raw.next_named("progress")) == up.statuses["b"]
                up.set("b", "running", n=2)
                assert raw.data(await raw.next_named("progress")) == up.statuses["b"]


async def test_openapi_lists_delta_on_every_stream_route() -> None:
    async with list_upstream() as up, running_bridge(up.url, **LIST) as b:
        status, document = await get_json(f"{b.url}/openapi.json")
        assert status == 200
        for path in ("/v1/runs/{run_id}/stream", "/v1/streams", "/v1/events"):
            refs = [p.get("$ref") for p in document["paths"][path]["get"]["parameters"]]
            assert "#/components/parameters/Delta" in refs, path


async def test_a_feed_closes_at_its_final_state_with_the_end_events_off(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "events.toml"
    path.write_text("[builtin.complete]\nenabled = false\n[builtin.error]\nenabled = false\n")
    async with feed_upstream() as up:
        run = up.run("n7")
        run.add("STARTED")
        async with (
            running_bridge(up.url, **SEED_002, events_file=str(path)) as b,
            sse(f"{b.url}/v1/runs/n7/stream", AUTH) as s,
        ):
            assert (await s.next_event()).event == "STARTED"
            run.add("FAILING")
            run.status = "failed"
            assert [e.event for e in await s.rest()] == ["FAILING"]


async def test_v1_events_resumes_by_the_cursor_parameter_as_by_last_event_id() -> None:
    async with list_upstream() as up:
        up.set("a", "running", step=1)
        async with running_bridge(up.url, **LIST, linger=30) as b:
            async with sse(f"{b.url}/v1/events", AUTH) as s:
                await s.next_named("progress")
                up.set("a", "running", step=2)
                last = (await s.next_named("progress")).id
                up.set("a", "running", step=3)
                missed = await s.next_named("progress")
            for how in (f"?cursor={last}", f"?since={last}"):
                async with sse(f"{b.url}/v1/events{how}", AUTH) as again:
                    got = await again.next_named("progress")
                    assert (got.id, again.data(got)["data"]["step"]) == (missed.id, 3)


async def test_resuming_a_feed_after_its_last_event_sends_nothing_twice(
    tmp_path: pathlib.Path,
) -> None:
    """The Stream: events after the resume id, none twice; after the last one (the end
    events off), 204 as for snapshots, so an EventSource stops reconnecting."""
    path = tmp_path / "events.toml"
    path.write_text("[builtin.complete]\nenabled = false\n")
    async with feed_upstream() as up:
        run = up.run("n8")
        run.add("A")
        async with running_bridge(up.url, **SEED_002, events_file=str(path)) as b:
            async with sse(f"{b.url}/v1/streams?runs=n8", AUTH) as s:
                first = await s.next_named("A")
                run.add("B")
                second = await s.next_named("B")
            async with sse(f"{b.url}/v1/streams?runs=n8", {**AUTH, "Last-Event-ID": first.id}) as s:
                got = await s.next_event()
                assert (got.event, s.data(got)["id"]) == ("B", "2")
            run.status = "completed"
            async with sse(f"{b.url}/v1/runs/n8/stream", AUTH) as s:
                assert [e.event for e in await s.rest()] == ["A", "B"]
            async with sse(f"{b.url}/v1/runs/n8/stream", {**AUTH, "Last-Event-ID": "2"}) as s:
                assert s.status == 204
            async with sse(
                f"{b.url}/v1/streams?runs=n8", {**AUTH, "Last-Event-ID": second.id}
            ) as s:
                assert s.status == 204
