"""What cluster mode keeps in Redis, and the Lua scripts that change it atomically.

For one channel key K = ``<credentials digest>:<run id>`` (all its keys share the hash
tag ``{K}``)::

    <prefix>{K}:lease     string  the token of the poller that polls K now (PX lease)
    <prefix>{K}:meta      hash    epoch, seq (of the newest event), end ("" | t | s),
                                  ok (token of the lease holder whose poll last
                                  succeeded), polled (Redis time of that poll, ms),
                                  bytes (the length of the records in events)
    <prefix>{K}:events    list    the newest records, oldest first: at most
                                  BRIDGE_HISTORY_SIZE of them and BRIDGE_HISTORY_MAX_BYTES
                                  bytes, but always the newest one
    <prefix>{K}:interest  zset    tokens of pollers whose replica has viewers of K,
                                  scored by when that interest expires (ms)
    <prefix>{K}:live      pub/sub ``K\\n<record>`` for each new event, ``K\\n!`` when a
                                  new lease holder's first poll confirmed the history or a
                                  leader stepped aside: only replicas with viewers of K
                                  subscribe (targeted delivery)
    <prefix>secret        string  the key of the credentials digest, made once (SET NX)
    <prefix>fence         string  set (PX) on a primary the Sentinels replaced, by the first
                                  replica that moved away from it: commits there are
                                  refused (bridge/cluster/link.py)
    <prefix>events        pub/sub ``!poke\\n<run id>`` (bridge/cluster/__init__.py); every
                                  replica listens

A record is ``<epoch> <seq> <name> <kind>\\n<data>``: kind ``p`` (progress), ``t`` (a
terminal state the upstream reported) or ``s`` (a terminal event the bridge made: it
gave up, or the credentials were refused), data the status as one line of JSON; or kind
``d``, an event derived from a change (BRIDGE_EVENTS_FILE), name its event name, data
``[state, progress, data]`` as one line of JSON; or kind ``f``, a feed's item
(BRIDGE_FEED_PATH), name ``item``, data ``[cursor, event name, state, data]``: its SSE id
is the upstream's cursor on every replica. Each replica renders a status record in the
vocabulary (renamed, reshaped, or kept unsent) itself; a feed's end record holds the
last page.

Nothing here carries a credential: forwarded headers never leave the replica, K holds
only their keyed digest. Times are Redis's own (``TIME``), never a replica's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT

from bridge.events import sse
from bridge.events.channel import ChannelKey

#: Kinds of record.
PROGRESS, TERMINAL, SYNTHETIC, DERIVED, FEED = "p", "t", "s", "d", "f"
_NAMES = frozenset({sse.PROGRESS, sse.COMPLETE, sse.ERROR})

# Every script starts with this: times are Redis's own clock, in ms.
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: lease, meta, interest. ARGV: token, lease ms, active (0/1), may lead (0/1).
# Refreshes (or withdraws) this poller's interest, renews the lease it holds or takes a
# free one (never for an ended run), and says what Redis holds. A poller that may not
# lead gives up a lease it holds (a listed run whose list another replica polls now).
_TICK = (
    _PRELUDE
    + """
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local others = redis.call('ZCARD', KEYS[3])
if ARGV[3] == '1' then
  if redis.call('ZADD', KEYS[3], now + ttl, ARGV[1]) == 0 then others = others - 1 end
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
else
  others = others - redis.call('ZREM', KEYS[3], ARGV[1])
end
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'end', 'ok', 'polled')
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] and ARGV[4] == '0' then
  redis.call('DEL', KEYS[1])
  holder = false
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ttl)
elseif (not holder) and ARGV[3] == '1' and ARGV[4] ~= '0' and meta[3] ~= 't' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  holder = ARGV[1]
end
local since = -1
if meta[5] then since = now - tonumber(meta[5]) end
return {holder or '', meta[1] or '', meta[2] or '0', meta[3] or '', meta[4] or '', others, since}
"""
)

# KEYS: lease, meta, events, fence. ARGV: token, lease ms, keep ms, size, base epoch, base
# seq, channel, K, name, kind ('' when the status did not change), data, max bytes, then
# (name, kind, data) of each event derived from the change, written before the status's
# own record: a change is written whole or not at all, so a new leader never derives
# again what its predecessor wrote.
# Only the lease holder writes, and only on top of the history it has (base), and never on
# a fenced primary: returns {1, epoch, seq} (written; seq of the last record), {-1} (not
# the holder), {-2} (base out of date), {-3} (ended), {-4} (fenced).
_COMMIT = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return {-4} end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local now = now_ms()
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'end', 'ok', 'bytes')
local epoch, seq = meta[1], tonumber(meta[2] or '0')
local base = tonumber(ARGV[6])
if (not epoch) or (meta[3] == 's' and base == 0) then
  if base ~= 0 then return {-2} end
  -- a new history; its epoch differs from the one it replaces
  local fresh = tonumber(ARGV[5])
  if epoch and fresh <= tonumber(epoch) then fresh = tonumber(epoch) + 1 end
  redis.call('DEL', KEYS[3])
  epoch, seq = tostring(fresh), 0
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0, 'end', '', 'bytes', 0)
  meta[4] = false
  meta[5] = '0'
elseif meta[3] == 't' or meta[3] == 's' then
  return {-3}
elseif epoch ~= ARGV[5] or seq ~= base then
  return {-2}
end
redis.call('HSET', KEYS[2], 'ok', ARGV[1], 'polled', now)
if ARGV[10] ~= '' then
  local held = tonumber(meta[5] or '0')
  local n, record = 0, ''
  local function push(name, kind, data)
    seq = seq + 1
    record = epoch .. ' ' .. seq .. ' ' .. name .. ' ' .. kind .. '\\n' .. data
    n = redis.call('RPUSH', KEYS[3], record)
    held = held + #record
    redis.call('PUBLISH', ARGV[7], ARGV[8] .. '\\n' .. record)
  end
  for i = 13, #ARGV - 2, 3 do push(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
  push(ARGV[9], ARGV[10], ARGV[11])
  -- oldest first, never the newest (so never the terminal record)
  local size, most = tonumber(ARGV[4]), tonumber(ARGV[12])
  while n > 1 and (n > size or held > most) do
    held = held - #redis.call('LPOP', KEYS[3])
    n = n - 1
  end
  if n == 1 then held = #record end
  local ended = ''
  if ARGV[10] == 't' or ARGV[10] == 's' then ended = ARGV[10] end
  redis.call('HSET', KEYS[2], 'seq', seq, 'end', ended, 'bytes', held)
elseif meta[4] ~= ARGV[1] then
  redis.call('PUBLISH', ARGV[7], ARGV[8] .. '\\n!')
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {1, epoch, seq}
"""
)

# KEYS: meta, events. ARGV: epoch, keep ms, size, max bytes, channel, K, then records
# (oldest first, of that epoch, contiguous).
# Puts back what a replica holds and Redis lacks: the whole history when Redis lost it
# (restarted without persistence, or evicted it), or the records after Redis's newest one
# when it holds an older part of the same history (a primary promoted before the leader's
# last commits reached it). The highest seq wins; the others are told at once.
_RESTORE = (
    _PRELUDE
    + """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local top, last_kind = string.match(ARGV[#ARGV], '^%d+ (%d+) %S+ (%a)')
top = tonumber(top)
local base = 0
if meta[1] then
  if meta[1] ~= ARGV[1] or tonumber(meta[2]) >= top then return 0 end
  base = tonumber(meta[2])
else
  redis.call('DEL', KEYS[2])
  -- Nobody knows when the run was last polled: count it as polled now, so that whoever
  -- leads next waits a full interval instead of polling at once.
  local now = now_ms()
  redis.call('HSET', KEYS[1], 'polled', now)
end
for i = 7, #ARGV do
  local seq = tonumber(string.match(ARGV[i], '^%d+ (%d+) '))
  if seq > base then redis.call('RPUSH', KEYS[2], ARGV[i]) end
end
-- oldest first, never the newest
local held, n = 0, 0
for _, r in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  held = held + #r
  n = n + 1
end
local size, most = tonumber(ARGV[3]), tonumber(ARGV[4])
while n > 1 and (n > size or held > most) do
  held = held - #redis.call('LPOP', KEYS[2])
  n = n - 1
end
local ended = ''
if last_kind == 't' or last_kind == 's' then ended = last_kind end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', top, 'end', ended, 'bytes', held)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. '\\n!')
return 1
"""
)

# KEYS: lease, meta. ARGV: token, window ms, channel, K.
# A leader that cannot reach the upstream gives its lease up for a replica that can,
# unless another leader did so within the window (then the upstream is down for all, and
# handing over again would only restart the give-up clock): 1 given up, 0 kept.
_STEP_ASIDE = (
    _PRELUDE
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local now = now_ms()
local stepped = redis.call('HGET', KEYS[2], 'stepped')
if stepped and now - tonumber(stepped) < tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'stepped', now)
redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\\n!')
return 1
"""
)

# KEYS: lease, interest, meta. ARGV: token, ms since the poll in flight started ('': none).
# Gives up the lease (if still ours) and the interest. A leader stopped during a poll
# records that poll's start, so that its successor keeps the cadence instead of polling
# at once.
_RESIGN = (
    _PRELUDE
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
    local now = now_ms()
    redis.call('HSET', KEYS[3], 'polled', now - tonumber(ARGV[2]))
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Record:
    epoch: int
    seq: int
    name: str
    kind: str
    data: str

    @property
    def synthetic(self) -> bool:
        return self.kind == SYNTHETIC

    def encode(self) -> str:
        return f"{self.epoch} {self.seq} {self.name} {self.kind}\n{self.data}"

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        """A record, or None for anything malformed (never trusted blindly)."""
        head, sep, data = raw.partition(b"\n")
        parts = head.split(b" ")
        if not sep or len(parts) != 4:
            return None
        try:
            epoch, seq = int(parts[0]), int(parts[1])
            name, kind = parts[2].decode("ascii"), parts[3].decode("ascii")
            text = data.decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return None
        if seq < 1 or kind not in (PROGRESS, TERMINAL, SYNTHETIC, DERIVED, FEED):
            return None
        if kind not in (DERIVED, FEED) and name not in _NAMES:
            return None
        return cls(epoch, seq, name, kind, text)


@dataclass(frozen=True, slots=True)
class TickView:
    """What Redis holds for a channel key, as one tick saw it."""

    holder: str
    epoch: int | None
    seq: int
    end: str
    ok: str
    #: Pollers of other replicas whose viewers watch this key.
    others: int
    #: Milliseconds since the last successful poll by any replica (None: never).
    since_poll: int | None

    @property
    def fresh(self) -> bool:
        """The current lease holder has polled successfully: the history is up to date."""
        return bool(self.ok) and self.ok == self.holder


@dataclass(frozen=True, slots=True)
class Committed:
    #: 1 written, -1 not the lease holder, -2 base out of date, -3 the history ended.
    code: int
    epoch: int = 0
    seq: int = 0


#: The commit replies the ledger tells apart (on -2 and -3 alike it catches up).
WRITTEN, NOT_HOLDER, FENCED = 1, -1, -4


class Fenced(RedisConnectionError):
    """The primary refused a commit: another replica found it replaced by the Sentinels."""


#: Records read beyond those asked for (see ``Store.records``).
RECORDS_MARGIN = 16


def channel_name(key: ChannelKey) -> str:
    """K: how a channel key is named in Redis (run ids never contain a newline)."""
    return f"{key.credentials}:{key.run_id}"


def pokes_channel(prefix: str) -> str:
    """The one channel every replica listens on (pokes): see the module docstring."""
    return f"{prefix}events"


def fence_key(prefix: str) -> str:
    """Set on a primary the Sentinels replaced (see the module docstring)."""
    return f"{prefix}fence"


def parse_channel_name(name: str) -> ChannelKey | None:
    digest, sep, run_id = name.partition(":")
    return ChannelKey(run_id, digest) if sep and run_id else None


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


class Store:
    """The cluster's reads and writes for channel keys; every call is one round trip."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        lease_ms: int,
        keep_ms: int,
        history_size: int,
        history_max_bytes: int,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.fence_key = fence_key(prefix)
        self.lease_ms = lease_ms
        self.keep_ms = keep_ms
        self.history_size = history_size
        self.history_max_bytes = history_max_bytes
        self._tick = client.register_script(_TICK)
        self._commit = client.register_script(_COMMIT)
        self._restore = client.register_script(_RESTORE)
        self._resign = client.register_script(_RESIGN)
        self._step_aside = client.register_script(_STEP_ASIDE)

    def key(self, key: ChannelKey, part: str) -> str:
        return f"{self.prefix}{{{channel_name(key)}}}:{part}"

    def live_channel(self, key: ChannelKey) -> str:
        """The pub/sub channel of K's events: replicas with viewers of K subscribe."""
        return self.key(key, "live")

    async def tick(
        self, key: ChannelKey, token: str, *, active: bool, may_lead: bool = True
    ) -> TickView:
        keys = [self.key(key, "lease"), self.key(key, "meta"), self.key(key, "interest")]
        args: list[EncodableT] = [token, self.lease_ms, int(active), int(may_lead)]
        reply = await self._tick(keys=keys, args=args)
        holder, epoch, seq, end, ok, others, since = reply
        epoch_text = _text(epoch)
        return TickView(
            holder=_text(holder),
            epoch=int(epoch_text) if epoch_text else None,
            seq=int(_text(seq) or 0),
            end=_text(end),
            ok=_text(ok),
            others=max(int(others), 0),
            since_poll=None if int(since) < 0 else int(since),
        )

    async def commit(
        self,
        key: ChannelKey,
        token: str,
        base_epoch: int,
        base_seq: int,
        name: str = "",
        kind: str = "",
        data: str = "",
        derived: Sequence[tuple[str, str]] = (),
        derived_kind: str = DERIVED,
    ) -> Committed:
        """Write a change: ``derived`` (name, data) records first (of ``derived_kind``:
        a feed's items are ``FEED``), then the status's."""
        keys = [
            self.key(key, "lease"),
            self.key(key, "meta"),
            self.key(key, "events"),
            self.fence_key,
        ]
        args: list[EncodableT] = [
            token,
            self.lease_ms,
            self.keep_ms,
            self.history_size,
            base_epoch,
            base_seq,
            self.live_channel(key),
            channel_name(key),
            name,
            kind,
            data,
            self.history_max_bytes,
        ]
        for derived_name, derived_data in derived:
            args += [derived_name, derived_kind, derived_data]
        reply = await self._commit(keys=keys, args=args)
        code = int(reply[0])
        if code == FENCED:
            raise Fenced("the primary was replaced")
        if code != WRITTEN:
            return Committed(code)
        return Committed(code, int(_text(reply[1])), int(reply[2]))

    async def restore(self, key: ChannelKey, epoch: int, records: list[Record]) -> bool:
        """Offer these records (oldest first, contiguous, of ``epoch``); see the script."""
        if not records:
            return False
        keys = [self.key(key, "meta"), self.key(key, "events")]
        args: list[EncodableT] = [
            epoch,
            self.keep_ms,
            self.history_size,
            self.history_max_bytes,
            self.live_channel(key),
            channel_name(key),
            *(record.encode() for record in records),
        ]
        return bool(await self._restore(keys=keys, args=args))

    async def records(self, key: ChannelKey, count: int) -> list[Record]:
        """At least the newest ``count`` records (at most the history size), oldest first.

        A few more are read than asked for: events written since the caller looked at
        the head would otherwise push the oldest wanted ones out of the window.
        """
        count = min(count + RECORDS_MARGIN, self.history_size)
        if count <= 0:
            return []
        raw = await self.client.lrange(self.key(key, "events"), -count, -1)
        out = [Record.decode(i if isinstance(i, bytes) else i.encode()) for i in raw]
        return sorted((r for r in out if r is not None), key=lambda r: r.seq)

    async def step_aside(self, key: ChannelKey, token: str, window_ms: int) -> bool:
        """Give the lease up because this replica cannot reach the upstream (see the
        script); True when given up, and the other replicas are told at once."""
        keys = [self.key(key, "lease"), self.key(key, "meta")]
        args: list[EncodableT] = [token, window_ms, self.live_channel(key), channel_name(key)]
        return bool(await self._step_aside(keys=keys, args=args))

    async def resign(self, pollers: list[tuple[ChannelKey, str, int | None]]) -> None:
        """Give up the leases and interests of these (key, token, ms since the poll in
        flight started, if any) triples, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for key, token, in_flight_ms in pollers:
                keys = [self.key(key, "lease"), self.key(key, "interest"), self.key(key, "meta")]
                ago = "" if in_flight_ms is None else str(max(0, in_flight_ms))
                await self._resign(keys=keys, args=[token, ago], client=pipe)
            await pipe.execute()
