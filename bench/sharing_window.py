"""Upstream requests caused by 1, 10 and 100 viewers of one run over the same 10 s window.

    .venv/bin/python -m bench.sharing_window [--window 10] [--interval 2]

The real bridge (Hypercorn on loopback) in front of the simulated legacy API; writes
bench/out/sharing_window.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
from contextlib import AsyncExitStack

import aiohttp

from bridge.demo.legacy_api import LegacyApi, serving
from tests.support import running_bridge, sse


async def measure(viewers: int, window: float, interval: float) -> dict[str, float]:
    async with serving(LegacyApi()) as api:
        api.scripted("r")
        async with (
            running_bridge(api.url, poll_interval=interval, linger=0.0) as b,
            AsyncExitStack() as stack,
        ):
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            )
            streams = await asyncio.gather(
                *(
                    stack.enter_async_context(sse(f"{b.url}/v1/runs/r/stream", session=session))
                    for _ in range(viewers)
                )
            )
            await asyncio.gather(*(s.next_named("progress") for s in streams))
            before = api.requests["r"]
            await asyncio.sleep(window)  # the measurement window itself
            requests = api.requests["r"] - before
            total = api.requests["r"]
    return {
        "viewers": viewers,
        "window_s": window,
        "interval_s": interval,
        "upstream_requests": requests,
        "per_interval": requests / (window / interval),
        "since_first_connect": total,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    rows = [await measure(n, args.window, args.interval) for n in (1, 10, 100)]
    out = pathlib.Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "sharing_window.json").write_text(json.dumps(rows, indent=2))
    print("viewers  upstream requests in window  per interval  incl. connect phase")
    for row in rows:
        print(
            f"{row['viewers']:>7}  {row['upstream_requests']:>27}  {row['per_interval']:>12.2f}"
            f"  {row['since_first_connect']:>19}"
        )


if __name__ == "__main__":
    asyncio.run(main())
