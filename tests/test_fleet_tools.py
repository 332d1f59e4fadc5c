"""The tools around feeds and fleets: `sse-bridge watch` without a run id, and the
simulated API's list of runs and feed (what `sse-bridge demo` serves), against the real
bridge on loopback."""

from __future__ import annotations

import aiohttp

from bridge.demo.legacy_api import ACTIVE_PATH, FEED_PATH, LegacyApi
from tests.support import running_bridge, sse
from tests.test_watch import watch

NODES = ("a", "b")


async def test_watch_without_a_run_id_follows_every_listed_run(legacy: LegacyApi) -> None:
    one = legacy.scripted("one", nodes=NODES)
    two = legacy.scripted("two", nodes=NODES, outcome="failed")
    async with (
        running_bridge(legacy.url, upstream_list_path=ACTIVE_PATH) as b,
        watch("--url", b.url, "--json") as w,
    ):
        seen = {}
        while len(seen) < 2:
            event = await w.event()
            seen[event["run_id"]] = event
        assert seen["one"]["data"] == one.statuses[0]
        assert seen["two"]["state"] == two.statuses[0]["status"]
        two.advance(len(two.statuses))
        while (event := await w.event())["run_id"] != "two" or event["event"] != "error":
            pass
        assert event["data"] == two.statuses[-1]
        # The other run goes on, and so does watch.
        one.advance()
        while (event := await w.event())["run_id"] != "one":
            pass
        assert event["data"] == one.statuses[1]
        assert w.process.returncode is None


async def test_watch_without_a_run_id_says_when_the_bridge_follows_no_list(
    legacy: LegacyApi,
) -> None:
    async with running_bridge(legacy.url) as b, watch("--url", b.url) as w:
        code, _, err = await w.finish()
    assert code == 2
    assert "BRIDGE_UPSTREAM_LIST_PATH" in err


async def test_the_simulated_api_serves_a_feed_the_bridge_streams(legacy: LegacyApi) -> None:
    run = legacy.scripted("fed", nodes=("x", "y"))
    run.advance(2)  # x running, then done... as the scripted statuses go
    settings = {"feed_path": FEED_PATH, "state_expr": ".runStatus"}
    async with running_bridge(legacy.url, **settings) as b:
        async with sse(f"{b.url}/v1/runs/fed/stream") as s:
            started = await s.next_named("NODE_STARTED")
            assert started.id == "1" and s.data(started)["payload"] == {"node": "x"}
            run.advance(len(run.statuses))
            names = [e.event for e in await s.rest()]
            assert names[-1] == "complete"
            assert "NODE_COMPLETED" in names


async def test_the_simulated_api_lists_its_runs_still_going(legacy: LegacyApi) -> None:
    going = legacy.scripted("going", nodes=NODES)
    done = legacy.scripted("done", nodes=NODES)
    done.advance(len(done.statuses))
    async with aiohttp.ClientSession() as http, http.get(legacy.url + ACTIVE_PATH) as r:
        listed = await r.json()
    assert listed == [going.statuses[0]]


async def test_watch_shows_a_feed_runs_items_and_exits_on_its_end(legacy: LegacyApi) -> None:
    run = legacy.scripted("fed2", nodes=("x",))
    settings = {"feed_path": FEED_PATH, "state_expr": ".runStatus"}
    async with running_bridge(legacy.url, **settings) as b:
        run.advance(len(run.statuses))
        async with watch("fed2", "--url", b.url) as w:
            code, out, _ = await w.finish()
    assert code == 0
    assert "NODE_STARTED" in out and "NODE_COMPLETED" in out
    assert "✔ fed2 completed" in out
