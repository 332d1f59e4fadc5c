"""The dashboard over deltas (DESIGN.md "Deltas"), in real headless Chromium: the page asks
its streams for ``delta=json-patch``, applies each patch to the run's last whole status
(with the vendored fast-json-patch), shows what it showed with whole statuses, and when a
patch cannot be applied it reopens for whole statuses instead of showing a wrong one.

Chromium is driven as in tests/test_dashboard_browser.py (Debian's package through
Playwright, never downloaded).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, Page, Route, expect

from bridge.demo.legacy_api import LegacyApi
from bridge.demo.runs import ScriptedRun
from tests.support import RunningBridge, running_bridge, sse, wait_for
from tests.test_dashboard_browser import ROOT, WAIT_MS, browser, card, open_page
from tests.test_derived_events import seen

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the fixture, used by name


async def deltas(page: Page) -> dict[str, int]:
    counts: dict[str, int] = await page.evaluate("({...window.sseBridgeDeltas})")
    return counts


async def shows(page: Page, run_id: str, envelope: dict[str, Any]) -> None:
    """The card shows ``envelope`` (a whole status from a stream without deltas) as the
    page has always shown one: state, progress, detail, current node and nodes."""
    run = card(page, run_id)
    status = envelope["data"]
    await expect(run).to_have_attribute("data-status", envelope["state"], timeout=WAIT_MS)
    progress = envelope["progress"]
    # No number: an indeterminate bar, or a full one for a completed run.
    pct = "" if progress is None else str(round(progress * 100))
    if progress is None and status["status"] == "completed":
        pct = "100"
    await expect(run).to_have_attribute("data-progress", pct)
    await expect(run).to_have_attribute("data-detail", envelope["detail"] or "")
    current = status["currentNode"] or envelope["detail"]
    await expect(run.locator(".current")).to_have_text(f"▸ {current}" if current else "")
    nodes = run.locator(".nodes li")
    await expect(nodes).to_have_count(len(status["nodes"]))
    for i, node in enumerate(status["nodes"]):
        await expect(nodes.nth(i)).to_have_text(node["id"])
        await expect(nodes.nth(i)).to_have_attribute("data-status", node["status"])


async def advance_seen(b: RunningBridge, run: ScriptedRun) -> None:
    await wait_for(lambda: seen(b, run.id, run.statuses[run.index]))
    run.advance()


async def test_the_page_applies_patches_and_shows_what_whole_statuses_show(
    browser: Browser, legacy: LegacyApi
) -> None:
    run = legacy.scripted("d1")
    async with running_bridge(legacy.url, dashboard=True) as b:
        page = await open_page(browser, "about:blank")
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/v1/" in r.url else None)
        await page.goto(f"{b.url}/?runs=d1")
        # Without deltas, beside it: what the page must show at each change.
        async with sse(f"{b.url}/v1/streams?runs=d1") as plain:
            for index in range(len(run.statuses)):
                if index:
                    await advance_seen(b, run)
                whole = await plain.next_named("progress", "complete")
                assert json.loads(whole.data)["data"] == run.statuses[index]
                await shows(page, "d1", json.loads(whole.data))
        await expect(card(page, "d1")).to_have_attribute("data-event", "complete")
        await expect(card(page, "d1").locator(".result.outputs")).to_contain_text("d1 done")
        # Every status after the first whole one and before the end came as a patch.
        assert await deltas(page) == {
            "patches": len(run.statuses) - 2,
            "applied": len(run.statuses) - 2,
            "failed": 0,
            "resyncs": 0,
        }
        assert streams and all(
            parse_qs(urlsplit(url).query).get("delta") == ["json-patch"] for url in streams
        ), streams
        assert not page.errors  # type: ignore[attr-defined]


def envelope_frame(name: str, run_id: str, state: str, data: Any, frame_id: str) -> str:
    body = {"run_id": run_id, "id": "1-1", "state": state, "progress": 0.5, "detail": None}
    return f"id: {frame_id}\nevent: {name}\ndata: {json.dumps({**body, 'data': data})}\n\n"


async def test_a_patch_that_cannot_be_applied_reopens_for_a_whole_status(
    browser: Browser, legacy: LegacyApi
) -> None:
    run = legacy.scripted("d2")
    wrong = {**run.statuses[0], "nodes": [{"id": "wrong", "status": "failed"}]}
    # What the page gets on its first two streams instead of the bridge's: a patch with
    # no status to apply it to; then a status and a patch whose test fails.
    forged = [
        envelope_frame("patch", "d2", "bogus", [{"op": "add", "path": "/x", "value": 1}], "v1.a"),
        envelope_frame("progress", "d2", "bogus", wrong, "v1.b")
        + envelope_frame(
            "patch", "d2", "bogus", [{"op": "test", "path": "/status", "value": "no"}], "v1.c"
        ),
    ]
    streams: list[str] = []

    async def answer(route: Route) -> None:
        streams.append(route.request.url)
        if len(streams) <= len(forged):
            body = "retry: 60000\n\n" + forged[len(streams) - 1]
            await route.fulfill(status=200, content_type="text/event-stream", body=body)
        else:
            await route.continue_()

    async with running_bridge(legacy.url, dashboard=True) as b:
        page = await open_page(browser, "about:blank")
        await page.route("**/v1/streams?*", answer)
        await page.goto(f"{b.url}/?runs=d2")
        async with sse(f"{b.url}/v1/streams?runs=d2") as plain:
            first = json.loads((await plain.next_named("progress")).data)
            # The bridge's whole status, once the two forged streams were given up.
            await shows(page, "d2", first)
            assert await deltas(page) == {"patches": 2, "applied": 0, "failed": 2, "resyncs": 2}
            # Each reopening asked for deltas again, without the forged cursor.
            assert len(streams) == 3, streams
            for url in streams:
                query = parse_qs(urlsplit(url).query)
                assert query.get("delta") == ["json-patch"] and "cursor" not in query, url
            # And the patches after it apply.
            await advance_seen(b, run)
            await shows(page, "d2", json.loads((await plain.next_named("progress")).data))
        assert (await deltas(page))["applied"] == 1
        assert not page.errors  # type: ignore[attr-defined]


async def test_the_vendored_library_is_served_with_the_page_only(legacy: LegacyApi) -> None:
    path = "/static/vendor/fast-json-patch.js"
    vendored = (ROOT / "bridge" / "web" / "static" / "vendor" / "fast-json-patch.js").read_bytes()
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as session:
        async with session.get(b.url + path) as response:
            assert response.status == 404
    async with running_bridge(legacy.url, dashboard=True) as b, aiohttp.ClientSession() as session:
        async with session.get(b.url + path) as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            assert await response.read() == vendored
        async with session.get(b.url + "/") as response:
            page = await response.text()
        # The library before the page's script, which uses it.
        assert page.index(path) < page.index("/static/dashboard.js")
    # As vendored: the version its notes name.
    assert vendored.startswith(b"/*! fast-json-patch, version: 3.1.2 */")
    notes = (ROOT / "bridge" / "web" / "static" / "vendor" / "README.md").read_text()
    assert "| 3.1.2 | MIT" in notes
