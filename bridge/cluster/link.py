"""A replica's link to Redis: a bounded command pool, one pub/sub connection, and health.

One listener task per replica owns the only pub/sub connection: it subscribes to the
cluster's pokes channel and to the channel of each run this replica's viewers watch
(``follow``/``unfollow``: targeted delivery, so a replica never receives the events of
runs nobody here watches), hands each message to the pollers (in order, without a
queue), and decides whether Redis is *up*. It logs a line when Redis is lost and one
when it is back, never one per failed command; while Redis is down it retries with
backoff, and a new session subscribes to everything followed. Pollers that see a
command fail call ``trouble()``: the link is marked down at once (so /readyz says so)
and the listener checks it again right away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.polling.resilience import Backoff
from bridge.settings import Settings
from bridge.tasks import cancel_and_wait

log = logging.getLogger("bridge.cluster")

#: What a failed Redis command raises (redis-py's errors, socket errors, our timeouts).
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

#: Seconds between health checks of a quiet link.
CHECK_EVERY = 1.0
#: Commands in flight at most per replica (more wait for a free connection).
MAX_CONNECTIONS = 32


def safe_url(url: str) -> str:
    """The Redis URL for logs: scheme, host, port and database, never a password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def sentinel_description(settings: Settings) -> str:
    """Where Sentinel mode looks, for logs: the Sentinels and the service, no password."""
    hosts = ",".join(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for host, port in settings.sentinel_addresses
    )
    return f"sentinel://{hosts}/{settings.redis_sentinel_service}"


class PrimaryMoved(RedisConnectionError):
    """The Sentinels name another primary than the one the listener is subscribed on."""


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (asks Sentinel for the primary on every new connection)
    with BlockingConnectionPool's bound: at most max_connections, others wait ``timeout``
    for a free one, exactly like the BRIDGE_REDIS_URL pool (the MRO puts the Sentinel
    connect logic over the blocking get/release)."""

    async def release(self, connection: AbstractConnection) -> None:
        # redis-py drops only *idle* connections when it learns of a new primary; one that
        # was in use then would go back to the pool still talking to the old primary (which,
        # if cut off rather than demoted, keeps accepting writes). Closed here, its next use
        # asks the Sentinels again.
        where = (getattr(connection, "host", None), getattr(connection, "port", None))
        if self.master_address is not None and where != self.master_address:
            await connection.disconnect()
        await super().release(connection)


def _sentinel_client(settings: Settings) -> tuple[Redis, Sentinel]:
    timeout = settings.redis_timeout
    password = settings.redis_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        settings.sentinel_addresses,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Several Sentinels are asked in turn: one down is no reason to wait on it twice.
            "retry": Retry(NoBackoff(), 0),
            "password": password.get_secret_value() if password else None,
        },
    )
    data_password = settings.redis_password
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_service or "",
        connection_pool_class=_BlockingSentinelPool,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # As with one URL: a pooled connection to a primary that went away fails once and
        # its retry reconnects, which asks the Sentinels again (the new primary).
        retry=Retry(NoBackoff(), 1),
        password=data_password.get_secret_value() if data_password else None,
        db=settings.redis_db,
    )
    return client, sentinel


def pool_exhausted(error: BaseException) -> bool:
    """redis-py's BlockingConnectionPool gave up waiting for a free connection (it raises
    ConnectionError("No connection available.") from the wait's TimeoutError)."""
    return isinstance(error, RedisConnectionError) and isinstance(error.__cause__, TimeoutError)


def describe(error: BaseException) -> str:
    """A few words on why Redis failed, without anything a message might carry."""
    if isinstance(error, PrimaryMoved):
        return "the Sentinels named a new primary; following it"
    if isinstance(error, MasterNotFoundError):
        return "no Sentinel answered with a primary for BRIDGE_REDIS_SENTINEL_SERVICE"
    if isinstance(error, AuthenticationError) or (
        isinstance(error, ResponseError) and str(error).startswith(("NOAUTH", "WRONGPASS"))
    ):
        return "it refused the credentials in BRIDGE_REDIS_URL (or BRIDGE_REDIS_PASSWORD)"
    if isinstance(error, TimeoutError) or type(error).__name__ == "TimeoutError":
        return "it did not answer within BRIDGE_REDIS_TIMEOUT"
    if isinstance(error, ResponseError):
        word = str(error).split(" ", 1)[0]
        return (
            f"it answered {word}" if word.isalpha() and word.isupper() else "it answered an error"
        )
    return f"unreachable ({type(error).__name__})"


class RedisLink:
    def __init__(self, settings: Settings, on_message: Callable[[bytes], None]) -> None:
        timeout = settings.redis_timeout
        self._sentinel = bool(settings.redis_sentinels)
        #: Sentinel mode: the Sentinels' clients (closed with the link; the pool only
        #: closes its connections to the primary).
        self._sentinels: Sentinel | None = None
        if self._sentinel:
            self.where = sentinel_description(settings)
            self.client, self._sentinels = _sentinel_client(settings)
        else:
            assert settings.redis_url is not None
            self.where = safe_url(settings.redis_url)
            pool = BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=MAX_CONNECTIONS,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One quick retry on a fresh connection: a pooled connection to a Redis that
                # restarted fails once, and that is not an outage.
                retry=Retry(NoBackoff(), 1),
            )
            self.client = Redis(connection_pool=pool)
        self.up = False
        #: The cluster's credentials-digest key (None until Redis first answered).
        self.secret: bytes | None = None
        self._on_message = on_message
        self._prefix = settings.redis_prefix
        self._timeout = timeout
        self._check_now = asyncio.Event()
        self._settled = asyncio.Event()
        self._reported = False  # an outage was logged and not yet its end
        self._task: asyncio.Task[None] | None = None
        self._check_every = min(CHECK_EVERY, settings.poll_interval)
        #: The per-run channels followed (every session subscribes to all of them).
        self.following: set[str] = set()
        #: Follows waiting for Redis to confirm their subscription, by channel.
        self._confirming: dict[str, list[asyncio.Future[None]]] = {}
        #: (Un)subscriptions asked since the session's sender last sent (it sends them in
        #: one command each: thousands of runs starting at once are a few commands).
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def pokes_channel(self) -> str:
        return f"{self._prefix}events"

    async def follow(self, channel: str) -> None:
        """Receive ``channel``'s messages from now on: returns once Redis confirmed the
        subscription (so nothing published after this returns is missed), within
        BRIDGE_REDIS_TIMEOUT; raises TimeoutError otherwise."""
        self.following.add(channel)
        self._to_unsubscribe.discard(channel)
        self._to_subscribe.add(channel)
        self._changed.set()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._confirming.setdefault(channel, [])
        waiters.append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
                waiters.remove(waiter)
                if not waiters and self._confirming.get(channel) is waiters:
                    del self._confirming[channel]

    def unfollow(self, channel: str) -> None:
        """Stop receiving ``channel`` (sent with the next batch; a session that starts
        meanwhile does not subscribe to it)."""
        self.following.discard(channel)
        self._to_subscribe.discard(channel)
        self._to_unsubscribe.add(channel)
        self._changed.set()

    async def start(self) -> None:
        """Start the listener; wait (at most BRIDGE_REDIS_TIMEOUT) for a first verdict.

        Redis down at start is not fatal: the replica serves, /readyz answers 503 and
        stream requests get 503 until Redis answers (no crash loop when Redis and the
        bridge start together).
        """
        self._task = asyncio.create_task(self._listen(), name="cluster-listener")
        with suppress(TimeoutError):
            async with asyncio.timeout(self._timeout + 0.5):
                await self._settled.wait()

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self.up = False
        with suppress(*REDIS_FAILURES):
            await self.client.aclose(close_connection_pool=True)
        if self._sentinels is not None:
            with suppress(*REDIS_FAILURES):
                await self._sentinels.aclose()

    def trouble(self, error: BaseException) -> None:
        """A command failed: Redis counts as down until the listener sees it answer.

        Not when the command never left: all MAX_CONNECTIONS were busy for
        BRIDGE_REDIS_TIMEOUT (thousands of runs starting at once on a busy replica).
        That one call fails; calling Redis down would fail every poller and every new
        viewer of the replica with it.
        """
        if pool_exhausted(error):
            return
        self._down(error)
        self._check_now.set()

    # --- the listener ----------------------------------------------------------------

    async def _listen(self) -> None:
        # Through Sentinel an outage is usually a failover that ends when a replica is
        # promoted (a second or two): retry often enough to follow it at once. Each retry
        # is one Sentinel query and one connect.
        backoff = Backoff(0.05, 0.5 if self._sentinel else 2.0)
        while True:
            try:
                await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except REDIS_FAILURES as error:
                self._down(error)
            self._settled.set()
            self._check_now.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(backoff.next_delay()):
                    await self._check_now.wait()

    async def _session(self, backoff: Backoff) -> None:
        """Subscribe, then pass messages on and check health until something fails."""
        pubsub = self.client.pubsub()
        sender: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self._timeout):
                # A new connection: everything followed, in one command; what is asked
                # while it is on its way goes with the sender's first batch.
                self._to_subscribe.clear()
                self._to_unsubscribe.clear()
                await pubsub.subscribe(self.pokes_channel, *self.following)
                await self._check(pubsub)
            sender = asyncio.create_task(self._send_subscriptions(pubsub), name="cluster-sub")
            backoff.reset()
            checked = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=self._check_every)
                if message is not None:
                    self._on_pubsub(message)
                if sender.done():
                    sender.result()  # it failed: end the session (a new connection)
                now = time.monotonic()
                if self._check_now.is_set() or now - checked >= CHECK_EVERY:
                    self._check_now.clear()
                    async with asyncio.timeout(self._timeout):
                        await self._check(pubsub)
                    checked = now
        finally:
            if sender is not None:
                await cancel_and_wait(sender)
            with suppress(*REDIS_FAILURES):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _send_subscriptions(self, pubsub: PubSub) -> None:
        """The session's one sender of (un)subscriptions, in batches; the listener reads
        the confirmations (only the listener reads the connection)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            drop, self._to_unsubscribe = self._to_unsubscribe, set()
            add, self._to_subscribe = self._to_subscribe, set()
            async with asyncio.timeout(self._timeout):
                if drop:
                    await pubsub.unsubscribe(*drop)
                if add:
                    await pubsub.subscribe(*add)

    def _on_pubsub(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            self._deliver(message.get("data"))
        elif kind == "subscribe":
            channel = message.get("channel")
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            for waiter in self._confirming.pop(name, ()):
                waiter.set_result(None)

    async def _check(self, pubsub: PubSub) -> None:
        """Redis answers (and keeps the cluster's digest key): the link is up."""
        await self._on_primary(pubsub)
        secret = await _shared_secret(self.client, f"{self._prefix}secret", self.secret)
        if self.secret is not None and secret != self.secret:
            log.warning(
                "cluster: the shared credentials key in Redis changed (was Redis flushed?); "
                "viewers that connect now may start a second poller for a run"
            )
        self.secret = secret
        if not self.up:
            self.up = True
            primary = ""
            connection = pubsub.connection
            if isinstance(self.client.connection_pool, SentinelConnectionPool) and connection:
                primary = f" (primary {connection.host}:{connection.port})"
            log.info("cluster: connected to Redis at %s%s", self.where, primary)
            self._reported = False
        self._settled.set()

    async def _on_primary(self, pubsub: PubSub) -> None:
        """Sentinel mode: the pub/sub connection is on the primary the Sentinels name now.

        After a failover the old primary may stay reachable (demoted to a replica, or cut
        off from the others): its pub/sub connection then goes quiet instead of failing,
        and nothing is published there any more. So each check asks the Sentinels, and a
        move ends the session: the listener subscribes again, through the pool, on the new
        primary. Asking also drops the pool's idle connections to the old one.
        """
        pool = self.client.connection_pool
        if not isinstance(pool, SentinelConnectionPool):
            return
        ask = pool.get_master_address  # redis-py leaves it untyped
        primary: tuple[str, int] = await ask()  # type: ignore[no-untyped-call]
        connection = pubsub.connection
        if connection is not None and (connection.host, connection.port) != primary:
            raise PrimaryMoved("the primary moved")

    def _deliver(self, data: object) -> None:
        if isinstance(data, bytes):
            try:
                self._on_message(data)
            except Exception:
                # A poller's bug must not end the listener: the tick repairs the copy.
                log.exception("cluster: a pub/sub message could not be applied")

    def _down(self, error: BaseException) -> None:
        was_up, self.up = self.up, False
        if was_up or not self._reported:
            self._reported = True
            if was_up:
                log.warning(
                    "cluster: lost Redis at %s (%s); viewers keep their streams, polling "
                    "pauses and /readyz answers 503 until it is back",
                    self.where,
                    describe(error),
                )
            else:
                log.warning(
                    "cluster: cannot use Redis at %s (%s); /readyz answers 503 and new "
                    "streams get 503 until it answers; retrying",
                    self.where,
                    describe(error),
                )


async def _shared_secret(client: Redis, key: str, mine: bytes | None) -> bytes:
    """The digest key in Redis; a new random one if none is there (first replica wins).

    A replica that already has one puts it back (Redis restarted empty), so that the
    digests of running pollers stay valid for the whole cluster.
    """
    candidate = mine if mine is not None else os.urandom(32)
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(key, candidate, nx=True)
        pipe.get(key)
        _, value = await pipe.execute()
    return bytes(value) if isinstance(value, bytes) and value else candidate
