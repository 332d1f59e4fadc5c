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

Through Sentinel a second task watches the Sentinels (all at once, each briefly, and
their ``+switch-master`` announcements), and a replica leaving a replaced primary fences
it (``RedisLink._on_primary``).
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

from bridge.cluster.store import Fenced, fence_key, pokes_channel
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
#: Seconds one Sentinel may take to answer (at most BRIDGE_REDIS_TIMEOUT): they are asked
#: all at once, so one that hangs costs this, never more, and is never waited for twice.
SENTINEL_TIMEOUT = 0.25
#: How long a replaced primary refuses commits (ms) when nothing demotes it sooner (its
#: demotion resyncs it from the new primary, which drops the fence).
FENCE_MS = 60_000
#: Seconds the Sentinels must name a primary under an older config epoch than the one
#: known before it is believed.
STALE_EPOCH_S = 30.0


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


Address = tuple[str, int]


class _Sentinels(Sentinel):
    """redis-py's Sentinel client, asking every Sentinel at once instead of in turn.

    redis-py asks them one after the other, each with the whole socket timeout (its
    ``discover_master``), so one that hangs (SIGSTOP, a host cut off: no refusal, no
    answer) costs a full timeout on every question, and with the health check bounded by
    that same timeout the next one was never asked. The clients' guidelines ask for a
    short timeout per Sentinel (https://redis.io/topics/sentinel-clients, "Step 1").
    Here each Sentinel gets SENTINEL_TIMEOUT, all are asked together, and among those
    that answer the one with the highest ``config-epoch`` is believed (SENTINEL MASTER
    reports it): after a failover the Sentinels that have not yet heard of it (they learn
    from each other's hello messages, every 2 s) name the old primary with an older
    epoch (https://redis.io/docs/management/sentinel/, "Configuration epochs",
    "Configuration propagation"). The answer is kept: a new connection within
    CHECK_EVERY of the last question uses it, and when no Sentinel answers the primary
    last named stays in use (a Sentinel outage is no reason to leave a healthy primary).
    """

    def __init__(
        self,
        addresses: list[Address],
        *,
        service: str,
        ask_timeout: float,
        sentinel_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(addresses, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        self.service = service
        self.ask_timeout = ask_timeout
        #: The primary the Sentinels name, with its config epoch, and when they said so.
        self.named: Address | None = None
        self.epoch = -1
        self._named_at = -CHECK_EVERY
        self._older_since: float | None = None

    async def discover_master(self, service_name: str) -> Address:
        if self.named is not None and time.monotonic() - self._named_at < CHECK_EVERY:
            return self.named
        return await self.refresh()

    async def refresh(self) -> Address:
        """Ask every Sentinel now (bounded by SENTINEL_TIMEOUT): the primary they name."""
        sentinels: list[Redis] = self.sentinels
        answers = await asyncio.gather(*(self._ask(sentinel) for sentinel in sentinels))
        best = max((a for a in answers if a is not None), key=lambda a: a[1], default=None)
        now = time.monotonic()
        if best is not None and best[1] < self.epoch:
            # Older than what we know (a fence told us, or a Sentinel that has not yet
            # heard of the failover answered alone): not believed, unless it lasts
            # (Sentinels redeployed with a fresh state start their epochs again).
            if self._older_since is None:
                self._older_since = now
            if now - self._older_since < STALE_EPOCH_S:
                best = None
        else:
            self._older_since = None
        if best is None:
            if self.named is not None:
                return self.named
            raise MasterNotFoundError(f"No master found for {self.service!r}")
        self.adopt(*best)
        return best[0]

    def adopt(self, address: Address, epoch: int) -> None:
        """The primary is ``address`` as of config ``epoch`` (a Sentinel, or a fence)."""
        self.named, self.epoch = address, epoch
        self._named_at = time.monotonic()
        self._older_since = None

    async def _ask(self, sentinel: Redis) -> tuple[Address, int] | None:
        try:
            async with asyncio.timeout(self.ask_timeout):
                ask = sentinel.execute_command  # redis-py leaves it untyped
                state = await ask("SENTINEL MASTER", self.service)  # type: ignore[no-untyped-call]
        except REDIS_FAILURES:
            return None
        if not isinstance(state, dict) or not self.check_master_state(state, self.service):
            return None
        return (str(state["ip"]), int(state["port"])), int(state.get("config-epoch", 0))


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


def _sentinel_client(settings: Settings) -> tuple[Redis, _Sentinels]:
    timeout = settings.redis_timeout
    password = settings.redis_sentinel_password
    ask_timeout = min(timeout, SENTINEL_TIMEOUT)
    sentinel = _Sentinels(
        settings.sentinel_addresses,
        service=settings.redis_sentinel_service or "",
        ask_timeout=ask_timeout,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": ask_timeout,
            # Asked again within a second anyway: a retry would only wait longer.
            "retry": Retry(NoBackoff(), 0),
            "password": password.get_secret_value() if password else None,
        },
    )
    data_password = settings.redis_password
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_service or "",
        connection_pool_class=_BlockingSentinelPool,
        password=data_password.get_secret_value() if data_password else None,
        db=settings.redis_db,
        **_pool_options(timeout),
    )
    return client, sentinel


def _pool_options(timeout: float) -> dict[str, Any]:
    """The primary's connection pool, through one URL or through Sentinel alike: at most
    MAX_CONNECTIONS (others wait ``timeout`` for a free one), each command and connect
    bounded by ``timeout``, and one quick retry on a fresh connection. A pooled connection
    to a Redis that restarted, or to a primary that went away, fails once, and that is no
    outage; through Sentinel the retry's connection asks the Sentinels for the primary."""
    return {
        "max_connections": MAX_CONNECTIONS,
        "timeout": timeout,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
    }


def pool_exhausted(error: BaseException) -> bool:
    """redis-py's BlockingConnectionPool gave up waiting for a free connection (it raises
    ConnectionError("No connection available.") from the wait's TimeoutError)."""
    return isinstance(error, RedisConnectionError) and isinstance(error.__cause__, TimeoutError)


def describe(error: BaseException) -> str:
    """A few words on why Redis failed, without anything a message might carry."""
    if isinstance(error, PrimaryMoved):
        return "the Sentinels named a new primary; following it"
    if isinstance(error, Fenced):
        return "another replica found this primary replaced; following it to the new one"
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
        self._sentinels: _Sentinels | None = None
        #: The Sentinels' config epoch when the listener's session started.
        self._session_epoch = -1
        #: A Sentinel announced a failover (``+switch-master``): ask them all now.
        self._announced = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        if self._sentinel:
            self.where = sentinel_description(settings)
            self.client, self._sentinels = _sentinel_client(settings)
        else:
            assert settings.redis_url is not None
            self.where = safe_url(settings.redis_url)
            pool = BlockingConnectionPool.from_url(settings.redis_url, **_pool_options(timeout))
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
        return pokes_channel(self._prefix)

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
        if self._sentinels is not None:
            self._watcher = asyncio.create_task(
                self._watch(self._sentinels), name="cluster-sentinels"
            )
        with suppress(TimeoutError):
            async with asyncio.timeout(self._timeout + 0.5):
                await self._settled.wait()

    async def close(self) -> None:
        if self._watcher is not None:
            await cancel_and_wait(self._watcher)
            self._watcher = None
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
                if self._sentinels is not None:
                    self._session_epoch = self._sentinels.epoch
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
        secret, fence = await _shared_secret(
            self.client, f"{self._prefix}secret", self.secret, fence_key(self._prefix)
        )
        if fence is not None:
            # Another replica saw the Sentinels replace this primary (these have not said
            # so yet): commits here are refused. The fence names the new primary: go.
            forward = _forwarding(fence)
            sentinels = self._sentinels
            if sentinels is not None and forward is not None and forward[1] > sentinels.epoch:
                sentinels.adopt(*forward)
            raise Fenced("the primary was replaced")
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

        After a failover the old primary may stay reachable and writable (demoted only
        seconds later, or cut off from the others): its pub/sub connection then goes
        quiet instead of failing, and nothing is published there any more. So each check
        compares it with what the Sentinels named last (``_watch`` asks them every
        second, and at once when one announces ``+switch-master``), and a move ends the
        session: the listener subscribes again, through the pool, on the new primary.

        Leaving a primary for one named under a newer config epoch also *fences* it: a
        key there makes every commit on it fail (``Store.commit``), so a replica that has
        not yet heard of the failover stops writing where nobody reads, within one
        interval, and cannot fork the history once its lease on the new primary expires.
        Best effort: a primary that is gone, or that refuses writes (demoted, or
        ``min-replicas-to-write``), is fenced already.
        """
        sentinels = self._sentinels
        connection = pubsub.connection
        if sentinels is None or sentinels.named is None or connection is None:
            return
        where = (connection.host, connection.port)
        if where == sentinels.named:
            return
        if sentinels.epoch > self._session_epoch:
            await self._fence(where, sentinels.named, sentinels.epoch)
            # What the old primary published before the fence still counts: a ping on
            # the subscribed connection answers after it (Redis runs one command at a
            # time), so everything before the pong is read.
            async with asyncio.timeout(self._timeout):
                await pubsub.ping()
                while True:
                    message = await pubsub.get_message(timeout=self._timeout)
                    if message is None or message.get("type") == "pong":
                        break
                    self._on_pubsub(message)
        pool = self.client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            # The pool learns it too: its idle connections to the old one go.
            ask = pool.get_master_address
            await ask()
        raise PrimaryMoved("the primary moved")

    async def _fence(self, where: Address, new: Address, epoch: int) -> None:
        kwargs = self.client.connection_pool.connection_kwargs
        old = Redis(
            host=where[0],
            port=where[1],
            password=kwargs.get("password"),
            db=kwargs.get("db", 0),
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await old.set(fence_key(self._prefix), f"{new[0]} {new[1]} {epoch}", px=FENCE_MS)
            log.info("cluster: fenced the replaced primary %s:%s", *where)
        except REDIS_FAILURES:
            pass
        finally:
            with suppress(*REDIS_FAILURES):
                await old.aclose()

    # --- the Sentinels ----------------------------------------------------------------

    async def _watch(self, sentinels: _Sentinels) -> None:
        """Ask the Sentinels every CHECK_EVERY, and at once when one announces a failover;
        tell the listener when the primary they name changed. Its own task, so that a
        Sentinel that hangs never delays the pub/sub messages or the health check."""
        announcers = [
            asyncio.create_task(self._announcements(sentinel, sentinels.service))
            for sentinel in sentinels.sentinels
        ]
        try:
            while True:
                self._announced.clear()
                before = (sentinels.named, sentinels.epoch)
                with suppress(*REDIS_FAILURES):
                    await sentinels.refresh()
                if (sentinels.named, sentinels.epoch) != before:
                    self._check_now.set()
                with suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY):
                        await self._announced.wait()
        finally:
            for task in announcers:
                await cancel_and_wait(task)

    async def _announcements(self, sentinel: Redis, service: str) -> None:
        """One Sentinel's ``+switch-master`` messages (``<name> <old ip> <old port> <new
        ip> <new port>``, published when it switches the primary it names:
        https://redis.io/docs/management/sentinel/, "Pub/Sub messages"). redis-py does
        not listen to them (redis/redis-py#3867); without them a replica would learn of a
        failover at its next question, up to CHECK_EVERY later, each at its own time."""
        backoff = Backoff(0.1, 2.0)
        while True:
            pubsub = sentinel.pubsub()
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe("+switch-master")
                backoff.reset()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=CHECK_EVERY
                    )
                    data = message.get("data") if message else None
                    if isinstance(data, bytes) and data.split(b" ", 1)[0] == service.encode():
                        self._announced.set()
            except REDIS_FAILURES:
                pass
            finally:
                with suppress(*REDIS_FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff.next_delay())

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


async def _shared_secret(
    client: Redis, key: str, mine: bytes | None, fence: str
) -> tuple[bytes, bytes | None]:
    """The digest key in Redis (a new random one if none is there: first replica wins),
    and the fence of this primary if it has one (see ``RedisLink._on_primary``).

    A replica that already has one puts it back (Redis restarted empty), so that the
    digests of running pollers stay valid for the whole cluster.
    """
    candidate = mine if mine is not None else os.urandom(32)
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(key, candidate, nx=True)
        pipe.get(key)
        pipe.get(fence)
        _, value, fenced = await pipe.execute()
    secret = bytes(value) if isinstance(value, bytes) and value else candidate
    return secret, bytes(fenced) if isinstance(fenced, bytes) else None


def _forwarding(fence: bytes) -> tuple[Address, int] | None:
    """The new primary and its config epoch, as a fence names them (``host port epoch``)."""
    parts = fence.split(b" ")
    try:
        host, port, epoch = parts[0].decode("ascii"), int(parts[1]), int(parts[2])
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return (host, port), epoch
