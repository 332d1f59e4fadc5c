"""The dashboard page in real headless Chromium (Debian's package, driven by Playwright).

No browser is downloaded: Playwright launches /usr/bin/chromium (``CHROMIUM`` overrides),
which ``scripts/install`` installs when it is missing. Without it these tests fail, with
a message saying so; they are never skipped.

``UPDATE_SCREENSHOT=1`` also writes docs/dashboard.png, the README's picture.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from bridge.demo.legacy_api import LegacyApi, serving
from bridge.demo.main import settings_overrides
from bridge.demo.runs import TimedRun
from bridge.web.dashboard import enable_demo_api
from tests.support import RunningBridge, loopback_socket, running_bridge

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
WAIT_MS = 15_000

#: Records every change of a card's state as the page renders it (wall clock, ms).
RECORDER = """
window.__changes = [];
new MutationObserver((records) => {
  const t = Date.now();
  for (const r of records) {
    const el = r.target;
    if (!el.dataset || !el.dataset.runId) continue;
    window.__changes.push({run: el.dataset.runId, status: el.dataset.status,
                           progress: Number(el.dataset.progress), t});
  }
}).observe(document, {subtree: true, attributes: true,
                      attributeFilter: ["data-progress", "data-status"]});
"""


def chromium_path() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if path is None:
        pytest.fail(
            f"Chromium is missing ({CHROMIUM}): run scripts/install, which installs Debian's "
            "chromium package, or set CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def api() -> AsyncIterator[LegacyApi]:
    """The simulated legacy API with steps long enough to see each one in the page."""
    async with serving(LegacyApi(step=0.25, seed=11)) as legacy:
        yield legacy


@asynccontextmanager
async def demo_bridge(api: LegacyApi, **overrides: Any) -> AsyncIterator[RunningBridge]:
    """What `sse-bridge demo` runs: the bridge with the page and the demo's run list,
    reading the simulated API as the demo configures it for the API's shape."""
    settings = {**settings_overrides(api.shape.profile), **overrides}
    async with running_bridge(api.url, dashboard=True, **settings) as b:
        enable_demo_api(b.app, api.url)
        yield b


async def open_page(browser: Browser, url: str, width: int = 1280, height: int = 900) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.add_init_script(RECORDER)
    await page.goto(url)
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def changes(page: Page, run_id: str) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = await page.evaluate("window.__changes")
    return [c for c in recorded if c["run"] == run_id]


def card(page: Page, run_id: str) -> Any:
    return page.locator(f'.run[data-run-id="{run_id}"]')


async def test_start_a_run_and_watch_it_complete(
    browser: Browser, api: LegacyApi, tmp_path: Path
) -> None:
    async with demo_bridge(api) as b:
        page = await open_page(browser, b.url + "/")
        await expect(page.locator("#start-run")).to_be_visible()
        await page.select_option("#outcome", "completed")
        await page.click("#start-run")
        run_id = "run-0001"
        await expect(card(page, run_id)).to_be_visible(timeout=WAIT_MS)
        await expect(card(page, run_id)).to_have_attribute(
            "data-status", "completed", timeout=WAIT_MS
        )
        run = card(page, run_id)
        await expect(run).to_have_attribute("data-progress", "100")
        await expect(run.locator(".state")).to_have_text("completed")
        await expect(run.locator(".percent")).to_have_text("100 %")
        assert await run.locator(".fill").evaluate("e => e.style.transform") == "scaleX(1)"
        # Every node done, and the outputs shown.
        nodes = run.locator(".nodes li")
        names = api.runs[run_id].status()["nodes"]
        assert await nodes.count() == len(names)
        for i in range(len(names)):
            await expect(nodes.nth(i)).to_have_attribute("data-status", "completed")
        await expect(run.locator(".result.outputs")).to_contain_text(f"{run_id}/result.json")
        # The bar moved through the run live, never backwards.
        seen = [c["progress"] for c in await changes(page, run_id)]
        assert len(set(seen)) >= 4, seen
        assert seen == sorted(seen) and seen[-1] == 100
        await expect(page.locator("#connection")).to_have_attribute("data-state", "idle")
        await page.screenshot(path=tmp_path / "completed.png", full_page=True)
        assert not page.errors  # type: ignore[attr-defined]


async def test_a_failing_run_shows_its_error(browser: Browser, api: LegacyApi) -> None:
    async with demo_bridge(api) as b:
        page = await open_page(browser, b.url + "/")
        await page.select_option("#outcome", "failed")
        await page.click("#start-run")
        run = card(page, "run-0001")
        await expect(run).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
        final = api.runs["run-0001"].status()
        await expect(run).to_have_attribute("data-event", "error")
        await expect(run.locator(".result.error")).to_have_text(final["errorMessage"])
        failed = [n["id"] for n in final["nodes"] if n["status"] == "failed"]
        assert len(failed) == 1
        await expect(run.locator(".nodes li", has_text=failed[0])).to_have_attribute(
            "data-status", "failed"
        )
        await expect(run.locator(".state")).to_have_text("failed")


async def test_ten_runs_update_on_one_connection(
    browser: Browser, api: LegacyApi, tmp_path: Path
) -> None:
    runs = [api.new_run("completed" if i % 3 else "failed") for i in range(10)]
    for run in runs:
        run.stop_at = len(run.nodes) - 1  # failing ones fail at their last node
    async with demo_bridge(api) as b:
        page = await browser.new_page(viewport={"width": 1280, "height": 2000})
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/v1/streams" in r.url else None)
        await page.add_init_script(RECORDER)
        await page.goto(b.url + "/?limit=10")
        cards = page.locator(".run")
        await expect(cards).to_have_count(10)
        for run in runs:
            await expect(card(page, run.id)).to_be_in_viewport()
        for run in runs:
            final = run.status(run.created + 60)["status"]
            await expect(card(page, run.id)).to_have_attribute(
                "data-status", final, timeout=WAIT_MS
            )
        for run in runs:
            seen = {(c["status"], c["progress"]) for c in await changes(page, run.id)}
            # Each card went through several live states, not just the first and last.
            assert len(seen) >= 3, (run.id, seen)
        # All ten over one EventSource (the browser would stall from the seventh).
        assert len(streams) == 1, streams
        await page.screenshot(path=tmp_path / "ten-runs.png", full_page=True)


async def test_the_page_recovers_when_the_bridge_restarts(
    browser: Browser, api: LegacyApi, tmp_path: Path
) -> None:
    run = api.scripted("nightly-build", nodes=("checkout", "build", "test", "package"))
    sock = loopback_socket()
    try:
        async with demo_bridge(api, sock=sock) as b:
            url = b.url
            page = await open_page(browser, url + "/")
            it = card(page, run.id)
            await expect(it).to_have_attribute("data-status", "queued", timeout=WAIT_MS)
            await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
            run.advance()
            await expect(it).to_have_attribute("data-progress", "0")
            await expect(it).to_have_attribute("data-status", "running", timeout=WAIT_MS)
        # The bridge is gone: the page says so, and keeps what it had.
        await expect(page.locator("#connection")).to_have_attribute(
            "data-state", "reconnecting", timeout=WAIT_MS
        )
        await expect(page.locator("#connection")).to_have_text("reconnecting…")
        run.advance(2)
        async with demo_bridge(api, sock=sock):
            await expect(page.locator("#connection")).to_have_attribute(
                "data-state", "live", timeout=WAIT_MS
            )
            expected = str(round(run.status()["progress"] * 100))
            await expect(it).to_have_attribute("data-progress", expected, timeout=WAIT_MS)
            await expect(it.locator(".current")).to_have_text("▸ test")
            run.advance(len(run.statuses))
            await expect(it).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
            await expect(it).to_have_attribute("data-progress", "100")
            # A run started after the restart shows up and completes too.
            await page.select_option("#outcome", "completed")
            await page.click("#start-run")
            await expect(card(page, "run-0001")).to_have_attribute(
                "data-status", "completed", timeout=WAIT_MS
            )
            await page.screenshot(path=tmp_path / "after-restart.png", full_page=True)
        assert url == b.url
    finally:
        sock.close()


async def test_outside_demo_mode_the_page_follows_the_runs_in_its_address(
    browser: Browser, api: LegacyApi
) -> None:
    visible = api.scripted("visible-run", nodes=("a", "b"))
    api.scripted("secret-run", nodes=("a", "b"))
    api.require("secret-run", "x-api-key", "k-1")
    async with running_bridge(api.url, dashboard=True) as b:
        page = await open_page(browser, b.url + "/?runs=visible-run,secret-run")
        await expect(page.locator("#start-run")).to_be_hidden()
        # The run this viewer may not see is shown as refused; the other one streams.
        secret = card(page, "secret-run")
        await expect(secret).to_have_attribute("data-status", "unauthorized", timeout=WAIT_MS)
        await expect(secret.locator(".result.error")).to_have_text(
            "The upstream API refused these credentials."
        )
        it = card(page, "visible-run")
        await expect(it).to_have_attribute("data-status", "queued", timeout=WAIT_MS)
        visible.advance(len(visible.statuses))
        await expect(it).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
        # Runs typed into the page join the same stream.
        api.scripted("typed-run", nodes=("a",))
        await page.fill("#run-id", "typed-run")
        await page.click("#watch button")
        await expect(card(page, "typed-run")).to_have_attribute(
            "data-status", "queued", timeout=WAIT_MS
        )
        assert "runs=typed-run" in page.url


async def test_a_card_says_why_it_waits_when_the_upstream_is_down(browser: Browser) -> None:
    # The bridge is up, its upstream is not: each stream is refused the way EventSource
    # retries (200, retry:, a comment naming the error), which EventSource never shows.
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    # A breaker that stays closed, so that the reason stays the unreachable upstream.
    dead = f"http://127.0.0.1:{port}"
    async with running_bridge(dead, dashboard=True, breaker_threshold=10_000) as b:
        page = await open_page(browser, b.url + "/?runs=r-1,r-2")
        reason = "upstream unavailable: the upstream API could not be reached"
        # The comment names the run whose upstream request failed; the other run on the
        # same stream waits for it.
        first = card(page, "r-1").locator(".waiting")
        await expect(first).to_have_text(f"Waiting — {reason}; retrying…", timeout=WAIT_MS)
        other = card(page, "r-2").locator(".waiting")
        await expect(other).to_have_text(f"Waiting — {reason} (run r-1); retrying…")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        assert not page.errors  # type: ignore[attr-defined]


async def test_the_detail_shows_on_the_card_and_says_why_a_run_failed(browser: Browser) -> None:
    # Databricks' state_message, read by the profile's BRIDGE_DETAIL_EXPR.
    async with profile_api("databricks-runs") as api, demo_bridge(api) as b:
        run = api.scripted("77", nodes=("a", "b"), outcome="failed")
        page = await open_page(browser, b.url + "/")
        it = card(page, "77")
        await expect(it).to_have_attribute("data-status", "PENDING", timeout=WAIT_MS)
        run.advance()
        await expect(it).to_have_attribute("data-status", "RUNNING", timeout=WAIT_MS)
        await expect(it).to_have_attribute("data-detail", "In run")
        await expect(it.locator(".current")).to_have_text("▸ In run")
        run.advance(len(run.statuses))
        await expect(it).to_have_attribute("data-status", "FAILED", timeout=WAIT_MS)
        await expect(it.locator(".result.error")).to_have_text("Node b failed")
        await expect(it.locator(".waiting")).to_be_hidden()
        assert not page.errors  # type: ignore[attr-defined]


@asynccontextmanager
async def profile_api(profile: str, step: float = 0.25) -> AsyncIterator[LegacyApi]:
    """The simulated API speaking ``profile``, as `sse-bridge demo --profile` runs it."""
    async with serving(LegacyApi(step=step, seed=11, profile=profile)) as legacy:
        yield legacy


async def animation(locator: Any) -> str:
    name: str = await locator.evaluate("e => getComputedStyle(e).animationName")
    return name


async def test_github_actions_state_an_indeterminate_bar_and_the_outcome(
    browser: Browser, tmp_path: Path
) -> None:
    # Slow clock-driven runs (at least 9 s), so the one started below is cancelled while
    # it runs however loaded the machine; the scripted runs move only when told.
    async with profile_api("github-actions", step=1.0) as api, demo_bridge(api) as b:
        ok = api.scripted("build-7", nodes=("a", "b", "c"))
        bad = api.scripted("build-8", nodes=("a", "b"), outcome="failed")
        page = await open_page(browser, b.url + "/")
        await expect(page.locator("#profile")).to_have_text("github-actions")
        it = card(page, "build-7")
        await expect(it).to_have_attribute("data-status", "queued", timeout=WAIT_MS)
        await expect(it).to_have_attribute("data-event", "progress")
        ok.advance()
        # The state as the profile reads it, and a bar that says "going, how far unknown".
        await expect(it).to_have_attribute("data-status", "in_progress", timeout=WAIT_MS)
        await expect(it.locator(".state")).to_have_text("in_progress")
        bar = it.locator(".bar")
        await expect(bar).to_have_attribute("data-mode", "indeterminate")
        assert await bar.get_attribute("aria-valuenow") is None
        assert await animation(it.locator(".fill")) == "sweep"
        await expect(it.locator(".percent")).to_have_text("")
        await expect(it).to_have_attribute("data-progress", "")
        # No seed-004 fields in a GitHub run: no node list, no outputs.
        await expect(it.locator(".nodes")).to_be_hidden()
        await page.screenshot(path=tmp_path / "github-running.png", full_page=True)
        ok.advance(len(ok.statuses))
        await expect(it).to_have_attribute("data-status", "success", timeout=WAIT_MS)
        await expect(it).to_have_attribute("data-event", "complete")
        await expect(it).to_have_attribute("data-outcome", "ok")
        await expect(it.locator(".state")).to_have_text("success")
        await expect(bar).to_have_attribute("data-mode", "determinate")
        await expect(it).to_have_attribute("data-progress", "100")
        await expect(it.locator(".result.done")).to_have_text("Completed (success).")
        assert await animation(it.locator(".fill")) == "none"
        # A failure: its state, the outcome, and a bar that stopped.
        failing = card(page, "build-8")
        bad.advance(len(bad.statuses))
        await expect(failing).to_have_attribute("data-status", "failure", timeout=WAIT_MS)
        await expect(failing).to_have_attribute("data-outcome", "error")
        await expect(failing.locator(".result.error")).to_have_text("Did not complete (failure).")
        await expect(failing.locator(".bar")).to_have_attribute("data-mode", "ended")
        assert await animation(failing.locator(".fill")) == "none"
        # The demo's controls: start a run, cancel it, see GitHub's "cancelled".
        await page.select_option("#outcome", "completed")
        await page.click("#start-run")
        started = card(page, "run-0001")
        await expect(started.locator(".cancel")).to_be_visible(timeout=WAIT_MS)
        await started.locator(".cancel").click()
        await expect(started).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)
        await expect(started).to_have_attribute("data-event", "error")
        await expect(started.locator(".cancel")).to_be_hidden()
        await page.screenshot(path=tmp_path / "github-ended.png", full_page=True)
        assert not page.errors  # type: ignore[attr-defined]
        # Reduced motion: still marked as going, without the sweep.
        still = api.scripted("build-9", nodes=("a",))
        still.advance()
        calm = await browser.new_page(reduced_motion="reduce")
        await calm.goto(b.url + "/")
        going = card(calm, "build-9")
        await expect(going).to_have_attribute("data-status", "in_progress", timeout=WAIT_MS)
        await expect(going.locator(".bar")).to_have_attribute("data-mode", "indeterminate")
        assert await animation(going.locator(".fill")) == "none"


async def test_argo_workflows_state_and_a_real_progress_bar(browser: Browser) -> None:
    async with profile_api("argo-workflows") as api, demo_bridge(api) as b:
        run = api.scripted("wf-1", nodes=("a", "b", "c"))
        failed = api.scripted("wf-2", nodes=("a", "b"), outcome="failed")
        page = await open_page(browser, b.url + "/")
        it = card(page, "wf-1")
        bar = it.locator(".bar")
        # Pending: Argo counts no progress before pods run.
        await expect(it).to_have_attribute("data-status", "Pending", timeout=WAIT_MS)
        await expect(bar).to_have_attribute("data-mode", "indeterminate")
        for shown in ("0", "33", "67"):
            run.advance()
            await expect(it).to_have_attribute("data-progress", shown, timeout=WAIT_MS)
            await expect(it).to_have_attribute("data-status", "Running")
            await expect(bar).to_have_attribute("data-mode", "determinate")
            await expect(bar).to_have_attribute("aria-valuenow", shown)
            await expect(it.locator(".percent")).to_have_text(shown + " %")
        transform = await it.locator(".fill").evaluate("e => e.style.transform")
        assert transform == "scaleX(0.67)"
        run.advance(len(run.statuses))
        await expect(it).to_have_attribute("data-status", "Succeeded", timeout=WAIT_MS)
        await expect(it).to_have_attribute("data-outcome", "ok")
        await expect(it).to_have_attribute("data-progress", "100")
        seen = [c["progress"] for c in await changes(page, "wf-1") if c["status"] != "Pending"]
        assert seen == sorted(seen) and {0, 33, 67, 100} <= set(seen), seen
        # A failed workflow: its phase, where it stopped, and Argo's message.
        other = card(page, "wf-2")
        failed.advance(len(failed.statuses))
        await expect(other).to_have_attribute("data-status", "Failed", timeout=WAIT_MS)
        await expect(other).to_have_attribute("data-outcome", "error")
        await expect(other).to_have_attribute("data-progress", "50")
        await expect(other.locator(".result.error")).to_have_text("Node b failed")
        assert not page.errors  # type: ignore[attr-defined]


def frozen(run: TimedRun, at: float) -> dict[str, Any]:
    return run.status(run.created + at)


async def test_readable_on_a_phone_and_the_readme_screenshot(
    browser: Browser, api: LegacyApi, tmp_path: Path
) -> None:
    # Runs frozen at telling moments, so the picture is the same every time.
    now = time.time()
    shots = [
        ("completed", 30.0),
        ("running", 2.6),
        ("failed", 30.0),
        ("running", 6.1),
        ("cancelled", 30.0),
        ("queued", 0.1),
    ]
    for i, (outcome, at) in enumerate(shots):
        timed = TimedRun.random(f"run-{101 + i:04d}", 1.0, api._rng)
        timed.created = now - at
        timed.outcome = outcome if outcome in ("completed", "failed", "cancelled") else "completed"  # type: ignore[assignment]
        api.scripted(timed.id, [frozen(timed, at)])
    async with demo_bridge(api) as b:
        for name, width, height in (("desktop", 1200, 600), ("phone", 390, 844)):
            page = await open_page(browser, b.url + "/", width, height)
            await expect(page.locator(".run")).to_have_count(len(shots))
            await expect(page.locator(".run[data-event]:not([data-event=''])")).to_have_count(
                len(shots), timeout=WAIT_MS
            )
            # Nothing wider than the screen, text not shrunk to unreadable.
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (name, overflow)
            size = await page.locator(".run h2").first.evaluate(
                "e => parseFloat(getComputedStyle(e).fontSize)"
            )
            assert size >= 14
            await page.wait_for_timeout(500)  # let the bars finish their transition
            await page.screenshot(path=tmp_path / f"dashboard-{name}.png", full_page=True)
            if name == "desktop" and os.environ.get("UPDATE_SCREENSHOT") == "1":
                (ROOT / "docs").mkdir(exist_ok=True)
                await page.screenshot(path=ROOT / "docs" / "dashboard.png", full_page=True)
            await page.close()


async def test_the_page_is_off_outside_demo_mode_unless_enabled(api: LegacyApi) -> None:
    async with running_bridge(api.url) as b, aiohttp.ClientSession() as session:
        for path in ("/", "/static/dashboard.js", "/dashboard/config.json", "/demo/api/runs"):
            async with session.get(b.url + path) as response:
                assert response.status == 404, path
                assert (await response.json())["error"] == "not_found"
    async with running_bridge(api.url, dashboard=True) as b, aiohttp.ClientSession() as session:
        async with session.get(b.url + "/") as response:
            assert response.status == 200
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            page = await response.text()
            # Everything the page loads is its own: no CDN, works offline.
            assert "http://" not in page and "https://" not in page
        for path in ("/static/dashboard.js", "/static/dashboard.css"):
            async with session.get(b.url + path) as response:
                assert response.status == 200
                assert "http://" not in await response.text()
        for path in ("/static/%2e%2e/app.py", "/static/py.typed", "/static/nothing.js"):
            async with session.get(b.url + path) as response:
                assert response.status == 404, path
        # Not in demo mode: no run list to forward to.
        async with session.get(b.url + "/demo/api/runs") as response:
            assert response.status == 404
        async with session.get(b.url + "/dashboard/config.json") as response:
            assert (await response.json())["demo"] is False


# --- how many runs one page watches smoothly (not a test: python -m tests.test_dashboard_browser)

PROBE = """
window.__arrivals = {};
window.__rendered = [];
window.__frames = [];
const Native = window.EventSource;
window.EventSource = class extends Native {
  constructor(url, options) {
    super(url, options);
    for (const name of ["progress", "complete", "error"]) {
      this.addEventListener(name, (e) => {
        if (typeof e.data !== "string") return;
        const m = JSON.parse(e.data);
        window.__arrivals[m.run_id + "|" + m.id] = {t: performance.now(), data: m.data};
      });
    }
  }
};
new MutationObserver((records) => {
  const t = performance.now();
  for (const r of records) {
    const id = r.target.dataset && r.target.dataset.eventId;
    if (id) window.__rendered.push({key: r.target.dataset.runId + "|" + id, t});
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-event-id"]});
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push(e.duration);
}).observe({type: "longtask"});
let last = 0;
const tick = (now) => {
  if (last) window.__frames.push(now - last);
  last = now;
  requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""


async def measure(runs: int, poll: float, seconds: float = 12.0) -> dict[str, float]:
    """``runs`` runs, each changing every ``poll`` seconds, on one page, for ``seconds``."""
    import random
    import statistics

    rng = random.Random(runs)
    async with serving(LegacyApi(step=poll)) as legacy:
        start = time.time()
        timed: dict[str, TimedRun] = {}
        for i in range(runs):
            nodes = tuple(f"n{k}" for k in range(int(seconds / poll)))
            run = TimedRun(f"run-{i:04d}", "completed", nodes, poll, start - rng.uniform(0, poll))
            legacy.runs[run.id] = timed[run.id] = run
        async with (
            demo_bridge(legacy, poll_interval=poll, multi_max_runs=max(runs, 50)) as b,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.add_init_script(PROBE)
            await page.goto(f"{b.url}/?limit={runs}")
            await expect(page.locator(".run")).to_have_count(runs, timeout=WAIT_MS)
            await page.wait_for_timeout(1000)
            await page.evaluate(
                "window.__frames = []; window.__rendered = []; window.__longtasks = []"
            )
            offset = await page.evaluate("Date.now() - performance.now()")
            await page.wait_for_timeout(seconds * 1000 - 2000)
            # Frames first: reading the big arrival map is itself a long task.
            frames = await page.evaluate("window.__frames")
            longtasks = await page.evaluate("window.__longtasks")
            rendered = await page.evaluate("window.__rendered")
            arrivals = await page.evaluate("window.__arrivals")
            await browser.close()
    in_page = []
    total = []
    for item in rendered:
        arrival = arrivals.get(item["key"])
        if arrival is None:
            continue
        in_page.append(item["t"] - arrival["t"])
        run = timed[item["key"].split("|")[0]]
        status = arrival["data"]
        # When the upstream changed to this status: the first step that shows it.
        k = int((offset / 1000 + item["t"] / 1000 - run.created) / run.step)
        while k > 0 and run.status(run.created + k * run.step + 1e-6) != status:
            k -= 1
        while k > 0 and run.status(run.created + (k - 1) * run.step + 1e-6) == status:
            k -= 1
        changed = run.created + k * run.step
        total.append(offset + item["t"] - changed * 1000)

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0

    return {
        "runs": runs,
        "dom_updates_per_s": len({item["key"] for item in rendered}) / (seconds - 2),
        "page_ms_p50": statistics.median(in_page) if in_page else 0.0,
        "page_ms_p95": pct(in_page, 0.95),
        "change_to_dom_ms_p50": statistics.median(total) if total else 0.0,
        "change_to_dom_ms_p95": pct(total, 0.95),
        "frames_over_50ms_pct": 100 * sum(f > 50 for f in frames) / max(len(frames), 1),
        "longest_frame_ms": max(frames, default=0.0),
        "fps": 1000 * len(frames) / max(sum(frames), 1),
        "long_tasks_pct": 100 * sum(longtasks) / ((seconds - 2) * 1000),
    }


if __name__ == "__main__":
    import json as _json
    import sys

    poll = float(os.environ.get("POLL", "0.5"))
    repeat = int(os.environ.get("REPEAT", "1"))
    for count in [int(a) for a in sys.argv[1:]] or [10, 25, 50]:
        for _ in range(repeat):
            result = asyncio.run(measure(count, poll))
            print(_json.dumps({k: round(v, 1) for k, v in result.items()}), flush=True)
