"""The one client the bridge uses to ask the legacy API for a run's status.

One ``aiohttp.ClientSession`` for the app's lifetime. Redirects are not followed (a
redirect could carry forwarded credentials to another host), bodies are capped after
decompression (so a gzip bomb costs at most the cap), only allow-listed viewer headers
are sent, and every failure becomes an ``UpstreamError`` whose message is the bridge's
own sentence: aiohttp's exceptions carry the request headers and are never shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from bridge import run_id as run_ids
from bridge.errors import (
    UpstreamBusy,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.ops.metrics import Metrics
from bridge.polling.resilience import CircuitBreaker, parse_retry_after
from bridge.settings import Settings

log = logging.getLogger("bridge.polling.upstream")

#: Headers that are never forwarded whatever the allow-list says: they describe the
#: viewer's connection to the bridge, not a credential for the upstream.
NEVER_FORWARDED = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
        "last-event-id",
    }
)


def forwardable(allow: tuple[str, ...], headers: Mapping[str, str]) -> dict[str, str]:
    """The viewer headers that go upstream: allow-listed, never hop-by-hop or X-Forwarded-*."""
    allowed = {name for name in allow if name not in NEVER_FORWARDED}
    chosen: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in allowed and not key.startswith("x-forwarded-"):
            chosen[key] = value
    return dict(sorted(chosen.items()))


@dataclass(frozen=True, slots=True)
class Validators:
    """What the upstream said identifies its last answer (for a conditional request)."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag is not None:
            out["If-None-Match"] = self.etag
        if self.last_modified is not None:
            out["If-Modified-Since"] = self.last_modified
        return out


@dataclass(frozen=True, slots=True)
class Fetched:
    """One answer: a status, or None for 304 Not Modified (the last status still holds)."""

    status: dict[str, Any] | None
    validators: Validators
    #: Seconds the upstream asked the bridge to wait before the next poll (Retry-After
    #: or X-Poll-Interval on a 200/304), None when it said nothing usable.
    wait: float | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One answer to any GET: its JSON (None for 304), validators, hint, and next link."""

    value: Any
    validators: Validators
    wait: float | None = None
    #: The absolute URL of ``Link: <...>; rel="next"``, when it is on the upstream's own
    #: origin (a link elsewhere would carry the forwarded credentials there).
    next_url: str | None = None
    #: The body as text (``fetch_page(any_json=True)``), a valid JSON text.
    text: str | None = None


def _next_link(response: aiohttp.ClientResponse, base: str) -> str | None:
    """``rel="next"`` of the Link header (RFC 8288), parsed by aiohttp, on ``base``'s origin."""
    try:
        link = response.links.get("next")
    except ValueError:
        return None
    if link is None:
        return None
    target = response.url.join(URL(str(link.get("url", ""))))
    if target.origin() != URL(base).origin():
        log.warning("the upstream's next page is on another origin; not followed")
        return None
    return str(target)


#: Longest validator kept: an ETag is a short token; anything longer is not one.
MAX_VALIDATOR = 256


def _validator(value: str | None) -> str | None:
    if value is None or not 0 < len(value) <= MAX_VALIDATOR or not value.isprintable():
        return None
    return value


def _poll_hint(headers: Mapping[str, str]) -> float | None:
    """The earliest next poll the upstream asked for, in seconds from now (None: none).

    X-Poll-Interval (GitHub) is whole seconds; Retry-After is seconds or an HTTP date
    (RFC 9110 10.2.3). Negative, garbage or past values say nothing and are ignored.
    """
    hint = headers.get("X-Poll-Interval")
    if hint is not None and hint.strip().isascii() and hint.strip().isdigit():
        return float(hint.strip())
    wait = parse_retry_after(headers.get("Retry-After"))
    return wait if wait else None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepting them would make the status unsendable.
    raise ValueError(name)


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but parses to inf, which the bridge cannot send on: same as above.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


class UpstreamClient:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._base = settings.upstream_base()
        self._session: aiohttp.ClientSession | None = None
        #: Requests sent; read by tests and /readyz.
        self.requests_sent = 0
        self.last_request: float | None = None
        #: When an upstream request last got any HTTP answer (the upstream is reachable).
        self.last_success: float | None = None
        #: When a request last found the upstream down (unreachable, 5xx, 429, timeout),
        #: and the code it got: /readyz follows whichever of the two came last.
        self.last_outage: tuple[float, str] | None = None
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown)
        # A global cap on requests in flight, whatever the number of pollers.
        self._slots = asyncio.Semaphore(settings.upstream_concurrency)

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._settings.upstream_timeout)
        connector = aiohttp.TCPConnector(
            limit=self._settings.upstream_concurrency, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            # BRIDGE_UPSTREAM_HEADERS go with every request, in both modes; in viewer mode
            # none of them can be a forwarded one (a configuration error).
            headers={
                "Accept": "application/json",
                "User-Agent": "sse-bridge",
                **self._settings.upstream_headers,
            },
            # The bridge forwards cookies as headers; it keeps none of its own.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, run_id: str) -> str:
        return self._base + run_ids.upstream_path(self._settings.upstream_run_path, run_id)

    async def fetch_status(self, run_id: str, headers: Mapping[str, str]) -> dict[str, Any]:
        """GET one run's status; a JSON object or an UpstreamError."""
        fetched = await self.fetch(run_id, headers)
        assert fetched.status is not None  # no validators sent: no 304
        return fetched.status

    async def fetch(
        self, run_id: str, headers: Mapping[str, str], validators: Validators | None = None
    ) -> Fetched:
        """GET one run's status, conditionally when ``validators`` are given (and
        BRIDGE_CONDITIONAL_REQUESTS is on): a 304 comes back as ``Fetched(None, ...)``."""
        page = await self.fetch_page(self.url_for(run_id), headers, validators)
        return Fetched(page.value, page.validators, page.wait)

    async def fetch_page(
        self,
        url: str,
        headers: Mapping[str, str],
        validators: Validators | None = None,
        *,
        any_json: bool = False,
    ) -> Page:
        """GET ``url`` (already percent-encoded) as ``fetch`` does; ``any_json``: the body
        may be any JSON value (a feed page or a list of runs), not only an object."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        if not self.breaker.allow():
            self._count("circuit_open")
            raise UpstreamUnavailable(
                "The upstream API is failing; the bridge is giving it a rest.",
                retry_after=self.breaker.cooldown,
            )
        outcome = "ok"
        verdict = False
        try:
            # One deadline covers the wait for a slot and the request itself.
            async with asyncio.timeout(self._settings.upstream_timeout):
                async with self._slots:
                    self.requests_sent += 1
                    self.last_request = time.monotonic()
                    sent = validators if self._settings.conditional_requests else None
                    extra = sent.headers() if sent is not None else {}
                    fetched = await self._get(url, {**headers, **extra}, sent, any_json)
            verdict = True
            self.breaker.success()
            self.last_success = time.monotonic()
            if fetched.value is None:
                outcome = "not_modified"
            return fetched
        except TimeoutError:
            outcome, verdict = "upstream_timeout", True
            self.breaker.failure()
            self.last_outage = (time.monotonic(), outcome)
            raise UpstreamTimeout() from None
        except UpstreamError as error:
            outcome, verdict = error.code, True
            if error.outage:
                self.breaker.failure()
                self.last_outage = (time.monotonic(), error.code)
            else:
                self.breaker.success()
                self.last_success = time.monotonic()
            raise
        finally:
            if not verdict:
                self.breaker.release_trial()
            self._count(outcome)

    async def probe(self) -> bool:
        """True when the upstream base URL gives any HTTP answer (no credentials sent)."""
        if self._session is None:
            return False
        try:
            async with asyncio.timeout(min(self._settings.upstream_timeout, 5.0)):
                async with self._session.get(self._base + "/", allow_redirects=False) as r:
                    await r.release()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        self.last_success = time.monotonic()
        return True

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.upstream_requests.labels(outcome).inc()

    async def _get(
        self, url: str, headers: Mapping[str, str], previous: Validators | None, any_json: bool
    ) -> Page:
        assert self._session is not None
        try:
            # encoded=True: the run id is percent-encoded already (run_id.upstream_path);
            # yarl must not decode %2B back into a "+" that a query would read as a space.
            async with self._session.get(
                URL(url, encoded=True), headers=dict(headers), allow_redirects=False
            ) as response:
                if response.status == 304 and previous is not None:
                    # Unchanged: no body to read. Keep the validators it did not renew.
                    await response.release()
                    renewed = Validators(
                        _validator(response.headers.get("ETag")) or previous.etag,
                        _validator(response.headers.get("Last-Modified")) or previous.last_modified,
                    )
                    return Page(None, renewed, _poll_hint(response.headers))
                if UpstreamRefused.handles(response.status):
                    raise UpstreamRefused(response.status)
                if response.status == 429:
                    raise UpstreamBusy(
                        "The upstream API asked the bridge to slow down.",
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    )
                if response.status != 200:
                    failed = UpstreamUnavailable(
                        f"The upstream API answered with HTTP {response.status}.",
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                        outage=response.status >= 500,
                    )
                    failed.upstream_status = response.status
                    raise failed
                body = await self._read_capped(response)
                validators = Validators(
                    _validator(response.headers.get("ETag")),
                    _validator(response.headers.get("Last-Modified")),
                )
                wait = _poll_hint(response.headers)
                following = _next_link(response, self._base)
        except UpstreamError:
            raise
        except TimeoutError:
            raise
        except (aiohttp.ClientError, OSError) as error:
            # type(error).__name__ only: str(error) may carry the request headers.
            log.debug("upstream request failed: %s", type(error).__name__)
            raise UpstreamUnavailable(
                "The upstream API could not be reached.", outage=True
            ) from None
        if self._metrics is not None:
            self._metrics.upstream_bytes.inc(len(body))
        if not any_json:
            return Page(self._parse(body), validators, wait, following)
        # Kept as text too: jq reads a text faster than a Python value it must encode first.
        return Page(self._parse_any(body), validators, wait, following, body.decode())

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self._settings.upstream_max_bytes
        declared = response.content_length
        if declared is not None and declared > cap:
            raise UpstreamUnavailable("The upstream status body is larger than allowed.")
        body = await response.content.read(cap + 1)
        while len(body) <= cap and not response.content.at_eof():
            more = await response.content.read(cap + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > cap:
            raise UpstreamUnavailable("The upstream status body is larger than allowed.")
        return body

    @staticmethod
    def _parse_any(body: bytes) -> Any:
        try:
            return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise UpstreamUnavailable("The upstream API sent a body that is not JSON.") from None

    @classmethod
    def _parse(cls, body: bytes) -> dict[str, Any]:
        value = cls._parse_any(body)
        if not isinstance(value, dict):
            raise UpstreamUnavailable("The upstream API sent JSON that is not an object.")
        return value
