"""What the Redis broker keeps in Redis, and how: key names, the event codec,
the Lua scripts with their ``KEYS`` order, and the errors that mean "Redis is
not there". The publisher (:mod:`.redis`) and the fan-out (:mod:`.redis_fanout`)
both read this module and nothing of each other's.

Keys, under a prefix (``SSE_REDIS_PREFIX``, default ``sse:``)::

    {prefix}epoch           a random token naming one life of the history
    {prefix}seq             the seq counter shared by all channels
    {prefix}heads           hash: channel -> seq of its newest event
    {prefix}lineage         hash: an earlier epoch -> the last seq it shares
                            with the current one; ``#replid``: the
                            replication id of the Redis that wrote it
    {prefix}stream:{name}   the channel's history, a Redis Stream; entry ids
                            are ``{seq}-0``
    {prefix}live:{name}     pub/sub channel that wakes the channel's readers
    {prefix}probe:{token}   pub/sub channel of one process's liveness probe

The cluster view (:mod:`.redis_presence`), in the same slot as the rest
when the prefix has a hash tag::

    {prefix}processes                  sorted set: the id of each reporting
                                       process -> when its report expires
                                       (ms, Redis's clock)
    {prefix}process:{id}               string: the process's figures as JSON
                                       (all but ``channels``); expires
    {prefix}process-channels:{id}      hash: channel -> the process's
                                       subscribers; expires with the above

A process id is ``{host}:{pid}:{token}``. A report is written with a
lifetime of :data:`REPORT_LIFETIMES` intervals; the index only finds the
reports, their expiry is what takes a dead process out of the view.

A stream entry's fields: ``p`` (the seq of the channel's previous entry),
then ``d`` (data), ``e`` (event type) and ``r`` (retry), each only when set.
A pub/sub message is ``{epoch}\\n{seq}\\n{JSON list of the entry's fields}``.

Every script starts by making sure the epoch exists. The epoch is made when
either the epoch or the counter is missing (an empty or flushed Redis, or
keys deleted by hand), so an id handed out before that can never be taken for
a position in the new history. Then comes the lineage (see ``_LINEAGE``): a
Redis that restarted or was promoted from a replica (its replication id
changed) gets a new epoch that continues the old one up to its counter, so
that no id handed out before, and perhaps lost, is ever handed out again for
another event. Then the fence (see ``_FENCE``): a caller that has seen a
position beyond what Redis has changes the epoch for good. In a Redis Cluster
every key carries the prefix's hash tag, so the scripts touch one slot, and
the live channels use sharded pub/sub.

Every entry carries ``p``. Redis trims a stream from its head only, so the
first retained entry's ``p`` is the newest entry trimmed away: a resume after
``a`` is complete exactly when the first entry after ``a`` has ``p <= a``.
(``XINFO STREAM`` reports a ``max-deleted-entry-id``, but ``XADD ... MAXLEN``
trimming does not update it.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from ..event import Event
from .base import Message

__all__ = [
    "CONNECTION_ERRORS",
    "LIVE_PROCESSES",
    "PUBLISH",
    "PUBLISH_MANY",
    "PUBLISH_MANY_SHA",
    "PUBLISH_SHA",
    "REPORT",
    "REPORT_LIFETIMES",
    "RESUME",
    "RESUME_SHA",
    "SPUBLISH",
    "SPUBLISH_MANY",
    "SPUBLISH_MANY_SHA",
    "SPUBLISH_SHA",
    "HighWater",
    "Keys",
    "decode_fields",
    "event_fields",
    "figures_from_report",
    "message_from_fields",
    "report_fields",
]

#: What redis-py raises when Redis cannot be reached or stops answering.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class Keys:
    """Key names under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.epoch = f"{prefix}epoch"
        self.seq = f"{prefix}seq"
        self.heads = f"{prefix}heads"
        self.lineage = f"{prefix}lineage"
        self.processes = f"{prefix}processes"

    def positions(self) -> tuple[str, str, str, str]:
        """The first ``KEYS`` of every id-handling script, in their order."""
        return (self.epoch, self.seq, self.heads, self.lineage)

    def stream(self, channel: str) -> str:
        """The Redis Stream holding ``channel``'s history."""
        return f"{self.prefix}stream:{channel}"

    def live(self, channel: str) -> str:
        """The pub/sub channel that wakes ``channel``'s live readers."""
        return f"{self.prefix}live:{channel}"

    def probe(self, token: str) -> str:
        """The pub/sub channel a process checks its own subscription with."""
        return f"{self.prefix}probe:{token}"

    def process(self, process_id: str) -> str:
        """A process's last report: its figures but the channels."""
        return f"{self.prefix}process:{process_id}"

    def process_channels(self, process_id: str) -> str:
        """A process's subscribers per channel, as it last reported them."""
        return f"{self.prefix}process-channels:{process_id}"


class HighWater:
    """The highest position a process has seen acknowledged or delivered: the
    fence's evidence (see the scripts). Shared by its publisher and fan-out."""

    __slots__ = ("epoch", "seq")

    def __init__(self) -> None:
        self.epoch = ""
        self.seq = 0

    def note(self, epoch: str, seq: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.seq = epoch, seq
        elif seq > self.seq:
            self.seq = seq

    def get(self) -> tuple[str, int]:
        return self.epoch, self.seq


# -- the event codec -----------------------------------------------------------


def event_fields(event: Event) -> list[str]:
    """``event`` as the flat field/value list an entry stores (``p`` aside)."""
    fields: list[str] = []
    if event.data is not None:
        fields += ["d", event.data]
    if event.event is not None:
        fields += ["e", event.event]
    if event.retry is not None:
        fields += ["r", str(event.retry)]
    return fields


def decode_fields(flat: Sequence[Any]) -> dict[str, str]:
    """``[b"d", b"x", b"e", b"t"]`` -> ``{"d": "x", "e": "t"}``."""
    it = iter(flat)
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in zip(it, it, strict=False)
    }


def message_from_fields(epoch: str, seq: int, channel: str, fields: dict[str, str]) -> Message:
    """The message for an entry's decoded fields: the inverse of :func:`event_fields`."""
    retry = fields.get("r")
    event = Event(
        data=fields.get("d"), event=fields.get("e"), retry=int(retry) if retry is not None else None
    )
    return Message.of(event, epoch, seq, channel)


# -- the cluster view's codec ---------------------------------------------------


def report_fields(figures: Mapping[str, Any]) -> tuple[str, list[str]]:
    """A process's figures as a report stores them: the JSON of all but the
    channels, and the channels as a flat field/value list for a hash (so that
    one channel's count can be read without the whole report)."""
    channels: Mapping[str, int] = figures.get("channels") or {}
    body = json.dumps(
        {key: value for key, value in figures.items() if key != "channels"},
        separators=(",", ":"),
        sort_keys=True,
    )
    return body, [item for name, count in channels.items() for item in (name, str(count))]


def figures_from_report(body: bytes, channels: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The inverse of :func:`report_fields`."""
    figures: dict[str, Any] = json.loads(body)
    figures["channels"] = {name.decode(): int(count) for name, count in channels.items()}
    return figures


# -- the scripts ---------------------------------------------------------------

#: Every script runs on the primary only. A replica answers reads, and a
#: demoted primary that a connection still reaches after a failover is one:
#: what it holds may be behind the primary, and a replay read from it could
#: miss events. Each script refuses it as a replica refuses a write, before
#: anything is read or written, so that the caller looks for the primary.
_ENSURE_EPOCH = """
local replication = redis.call('INFO', 'replication')
if not string.find(replication, 'role:master', 1, true) then
  return redis.error_reply('READONLY this node is a replica: ask the primary')
end
local epoch = redis.call('GET', KEYS[1])
local replid = string.match(replication, 'master_replid:(%w+)')
if (not epoch) or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0, 'NX')
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[4], '#replid', replid)
end
local counter = tonumber(redis.call('GET', KEYS[2]))
"""

#: The lineage. Redis gets a new replication id whenever it restarts or a
#: replica is promoted, and either may have lost the newest writes (an
#: ``appendfsync everysec`` or RDB restart, a lagging replica): ids that were
#: handed out, and that clients may hold, would be handed out again for other
#: events. Redis cannot tell whether anything was lost, so the epoch moves on
#: and the old one is recorded as continued up to the counter: a client at or
#: before it resumes without a reset, one beyond it is told (``ahead``), and
#: no id ever names two events. A Redis written by an older version (no
#: replication id recorded) starts its lineage here.
_LINEAGE = """
local known = redis.call('HGET', KEYS[4], '#replid')
if known ~= replid then
  if known then
    if redis.call('HLEN', KEYS[4]) > 64 then
      redis.call('DEL', KEYS[4])  -- ids of 64 Redis lives ago: reset, not resumed
    end
    redis.call('HSET', KEYS[4], epoch, counter)
    epoch = ARGV[1]
    redis.call('SET', KEYS[1], epoch)
  end
  redis.call('HSET', KEYS[4], '#replid', replid)
end
"""

#: The fence. The caller says the highest position it has seen (ARGV[2] and
#: ARGV[3] of every script): in the current epoch, or in one the lineage
#: continues. Beyond what Redis has there, Redis lost ids it had handed out
#: (a failover to a lagging replica, a restart that lost its last writes),
#: and clients behind that position may have missed those events. A new
#: epoch with no lineage, before any id is handed out, makes every id from
#: before unknown, so what was lost surfaces as ``stream-reset`` to everyone.
#: (The epoch token is the one the lineage may have just used: no id was
#: handed out under it in between.)
_FENCE = """
local shared = nil
if ARGV[2] == epoch then
  shared = counter
elseif ARGV[2] ~= '' then
  local upto = redis.call('HGET', KEYS[4], ARGV[2])
  if upto then shared = tonumber(upto) end
end
if shared and tonumber(ARGV[3]) > shared then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[4], '#replid', replid)
end
"""

_PREAMBLE = _ENSURE_EPOCH + _LINEAGE + _FENCE


def _publish_script(publish_command: str) -> str:
    return (
        _PREAMBLE
        + """
local seq = redis.call('INCR', KEYS[2])
local entry = {'p', redis.call('HGET', KEYS[3], ARGV[5]) or '0'}
for i = 7, #ARGV do entry[#entry + 1] = ARGV[i] end
local id = seq .. '-0'
local added = redis.pcall('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], id, unpack(entry))
if type(added) == 'table' and added.err then
  -- The stream holds ids from a sequence whose counter was lost: nothing in
  -- it belongs to this epoch.
  redis.call('DEL', KEYS[5])
  entry[2] = '0'
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], id, unpack(entry))
end
redis.call('HSET', KEYS[3], ARGV[5], seq)
redis.call('"""
        + publish_command
        + """', ARGV[6], epoch .. '\\n' .. seq .. '\\n' .. cjson.encode(entry))
return {epoch, seq}
"""
    )


def _publish_many_script(publish_command: str) -> str:
    return (
        _PREAMBLE
        + """
local entries, lives, seen, first = {}, {}, {}, nil
local i, k = 5, 5
while i <= #ARGV do
  local channel, live, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local seq = redis.call('INCR', KEYS[2])
  first = first or seq
  local entry = {'p', redis.call('HGET', KEYS[3], channel) or '0'}
  for j = i + 3, i + 2 + n do entry[#entry + 1] = ARGV[j] end
  local id = seq .. '-0'
  local added = redis.pcall('XADD', KEYS[k], 'MAXLEN', '~', ARGV[4], id, unpack(entry))
  if type(added) == 'table' and added.err then
    redis.call('DEL', KEYS[k])
    entry[2] = '0'
    redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[4], id, unpack(entry))
  end
  redis.call('HSET', KEYS[3], channel, seq)
  entries[#entries + 1] = {seq, channel, entry}
  if not seen[live] then
    seen[live] = true
    lives[#lives + 1] = live
  end
  i, k = i + 3 + n, k + 1
end
-- The whole batch on each of its channels: a process takes it from the first
-- that arrives, so a stream on several of them gets its events in id order.
local message = epoch .. '\\n*' .. first .. '\\n' .. cjson.encode(entries)
for _, live in ipairs(lives) do redis.call('"""
        + publish_command
        + """', live, message) end
return {epoch, first}
"""
    )


#: Several events at once, consecutive seqs, one message per live channel.
#: KEYS: epoch, seq, heads, lineage, then the stream of each event's channel, in order.
#: ARGV: a new epoch should one be needed, the fence's epoch and seq, history
#: size, then per event: channel, pub/sub channel, the number of field values,
#: the :func:`event_fields`. The same pub/sub message goes to each of the
#: batch's live channels: ``{epoch}\n*{first seq}\n{JSON list of
#: [seq, channel, fields]}``. Returns ``{epoch, first seq}``.
PUBLISH_MANY = _publish_many_script("PUBLISH")
SPUBLISH_MANY = _publish_many_script("SPUBLISH")

#: KEYS: epoch, seq, heads, lineage, the channel's stream.
#: ARGV: a new epoch should one be needed, the caller's epoch and highest seq
#: seen (the fence), history size, channel, pub/sub channel, then the event's
#: :func:`event_fields`.
#: Returns ``{epoch, seq}``.
PUBLISH = _publish_script("PUBLISH")
#: The same for a Redis Cluster: sharded pub/sub, on the slot's shard only.
SPUBLISH = _publish_script("SPUBLISH")

#: KEYS: epoch, seq, heads, lineage, then the streams of the subscriber's channels.
#: ARGV: a new epoch should one be needed, the process's epoch and highest seq
#: seen (the fence), the client's epoch ('' to go live without replay), the
#: client's seq, a reason to reset for ('' for none).
#: Returns ``{epoch, seq, status, entries of stream 1, entries of stream 2, ...}``
#: where status is '' (entries follow) or why the stream must be reset.
RESUME = (
    _PREAMBLE
    + """
local seq = counter
if ARGV[6] ~= '' then return {epoch, seq, ARGV[6]} end
if ARGV[4] == '' then return {epoch, seq, ''} end
local after = tonumber(ARGV[5])
if ARGV[4] ~= epoch then
  -- An earlier epoch resumes where the lineage says the current one
  -- continues it; beyond that the client saw ids this Redis lost.
  local upto = redis.call('HGET', KEYS[4], ARGV[4])
  if not upto then return {epoch, seq, 'unknown-epoch'} end
  if after > tonumber(upto) then return {epoch, seq, 'ahead'} end
end
-- A position ahead of the counter: the client saw ids Redis no longer has.
-- Only that client is reset here; the processes that delivered those ids
-- hold the evidence for the fence (a client's word could be forged).
if after > seq then return {epoch, seq, 'ahead'} end
local result = {epoch, seq, ''}
for i = 5, #KEYS do
  local entries = redis.call('XRANGE', KEYS[i], '(' .. ARGV[5] .. '-0', '+')
  local first = entries[1]
  if first and first[2][1] == 'p' and tonumber(first[2][2]) > after then
    return {epoch, seq, 'evicted'}
  end
  result[#result + 1] = entries
end
return result
"""
)

#: How many report intervals a report lives: a process that misses two
#: reports in a row (a stalled Redis connection) is not dropped yet.
REPORT_LIFETIMES = 3

_PRUNE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

#: KEYS: the index of processes, the process's report, its channels.
#: ARGV: the process id, the report's lifetime in ms, the report's JSON
#: ('' to take the process out), then its channels' field/value pairs.
#: Returns the ids of the live processes.
REPORT = (
    _PRUNE
    + """
redis.call('DEL', KEYS[3])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  -- a few hundred pairs per call: unpack has a bound on its results
  for i = 4, #ARGV, 800 do
    redis.call('HSET', KEYS[3], unpack(ARGV, i, math.min(i + 799, #ARGV)))
  end
  if #ARGV > 3 then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)

#: KEYS: the index of processes. Returns the ids of the live processes.
LIVE_PROCESSES = _PRUNE + "return redis.call('ZRANGE', KEYS[1], 0, -1)\n"

PUBLISH_SHA = hashlib.sha1(PUBLISH.encode()).hexdigest()
SPUBLISH_SHA = hashlib.sha1(SPUBLISH.encode()).hexdigest()
PUBLISH_MANY_SHA = hashlib.sha1(PUBLISH_MANY.encode()).hexdigest()
SPUBLISH_MANY_SHA = hashlib.sha1(SPUBLISH_MANY.encode()).hexdigest()
RESUME_SHA = hashlib.sha1(RESUME.encode()).hexdigest()
