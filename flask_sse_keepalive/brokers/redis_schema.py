"""What the Redis broker keeps in Redis, and how: key names, the event codec,
the Lua scripts with their ``KEYS`` order, and the errors that mean "Redis is
not there". The publisher (:mod:`.redis`) and the fan-out (:mod:`.redis_fanout`)
both read this module and nothing of each other's.

Keys, under a prefix (``SSE_REDIS_PREFIX``, default ``sse:``)::

    {prefix}epoch           a random token naming one life of the history
    {prefix}seq             the seq counter shared by all channels
    {prefix}heads           hash: channel -> seq of its newest event
    {prefix}stream:{name}   the channel's history, a Redis Stream; entry ids
                            are ``{seq}-0``
    {prefix}live:{name}     pub/sub channel that wakes the channel's readers
    {prefix}probe:{token}   pub/sub channel of one process's liveness probe

A stream entry's fields: ``p`` (the seq of the channel's previous entry),
then ``d`` (data), ``e`` (event type) and ``r`` (retry), each only when set.
A pub/sub message is ``{epoch}\\n{seq}\\n{JSON list of the entry's fields}``.

Both scripts start by making sure the epoch exists. The epoch is made when
either the epoch or the counter is missing (an empty or flushed Redis, or
keys deleted by hand), so an id handed out before that can never be taken for
a position in the new history. Then both apply the fence (see ``_FENCE``): a
caller that has seen a position the counter has not reached changes the
epoch. In a Redis Cluster every key carries the prefix's hash tag, so the
scripts touch one slot, and the live channels use sharded pub/sub.

Every entry carries ``p``. Redis trims a stream from its head only, so the
first retained entry's ``p`` is the newest entry trimmed away: a resume after
``a`` is complete exactly when the first entry after ``a`` has ``p <= a``.
(``XINFO STREAM`` reports a ``max-deleted-entry-id``, but ``XADD ... MAXLEN``
trimming does not update it.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis

from ..event import Event
from .base import Message

__all__ = [
    "CONNECTION_ERRORS",
    "PUBLISH",
    "PUBLISH_SHA",
    "RESUME",
    "RESUME_SHA",
    "SPUBLISH",
    "SPUBLISH_SHA",
    "HighWater",
    "Keys",
    "decode_fields",
    "event_fields",
    "message_from_fields",
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

    def stream(self, channel: str) -> str:
        """The Redis Stream holding ``channel``'s history."""
        return f"{self.prefix}stream:{channel}"

    def live(self, channel: str) -> str:
        """The pub/sub channel that wakes ``channel``'s live readers."""
        return f"{self.prefix}live:{channel}"

    def probe(self, token: str) -> str:
        """The pub/sub channel a process checks its own subscription with."""
        return f"{self.prefix}probe:{token}"


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


# -- the scripts ---------------------------------------------------------------

_ENSURE_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if (not epoch) or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0, 'NX')
  redis.call('DEL', KEYS[3])
end
local counter = tonumber(redis.call('GET', KEYS[2]))
"""

#: The fence. The caller says the highest position it has seen in an epoch
#: (ARGV[2] and ARGV[3] of every script). If that is the current epoch and
#: Redis's counter is behind it, Redis lost ids it had handed out (a failover
#: to a lagging replica, a restart that lost its last writes): they would name
#: other events now. A new epoch, before any id is handed out, makes every id
#: from before unknown, so what was lost surfaces as ``stream-reset``.
_FENCE = """
if ARGV[2] == epoch and tonumber(ARGV[3]) > counter then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[3])
end
"""


def _publish_script(publish_command: str) -> str:
    return (
        _ENSURE_EPOCH
        + _FENCE
        + """
local seq = redis.call('INCR', KEYS[2])
local entry = {'p', redis.call('HGET', KEYS[3], ARGV[5]) or '0'}
for i = 7, #ARGV do entry[#entry + 1] = ARGV[i] end
local id = seq .. '-0'
local added = redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], id, unpack(entry))
if type(added) == 'table' and added.err then
  -- The stream holds ids from a sequence whose counter was lost: nothing in
  -- it belongs to this epoch.
  redis.call('DEL', KEYS[4])
  entry[2] = '0'
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], id, unpack(entry))
end
redis.call('HSET', KEYS[3], ARGV[5], seq)
redis.call('"""
        + publish_command
        + """', ARGV[6], epoch .. '\\n' .. seq .. '\\n' .. cjson.encode(entry))
return {epoch, seq}
"""
    )


#: KEYS: epoch, seq, heads, the channel's stream.
#: ARGV: a new epoch should one be needed, the caller's epoch and highest seq
#: seen (the fence), history size, channel, pub/sub channel, then the event's
#: :func:`event_fields`.
#: Returns ``{epoch, seq}``.
PUBLISH = _publish_script("PUBLISH")
#: The same for a Redis Cluster: sharded pub/sub, on the slot's shard only.
SPUBLISH = _publish_script("SPUBLISH")

#: KEYS: epoch, seq, heads, then the streams of the subscriber's channels.
#: ARGV: a new epoch should one be needed, the process's epoch and highest seq
#: seen (the fence), the client's epoch ('' to go live without replay), the
#: client's seq, a reason to reset for ('' for none).
#: Returns ``{epoch, seq, status, entries of stream 1, entries of stream 2, ...}``
#: where status is '' (entries follow) or why the stream must be reset.
RESUME = (
    _ENSURE_EPOCH
    + _FENCE
    + """
local seq = counter
if ARGV[6] ~= '' then return {epoch, seq, ARGV[6]} end
if ARGV[4] == '' then return {epoch, seq, ''} end
if ARGV[4] ~= epoch then return {epoch, seq, 'unknown-epoch'} end
local after = tonumber(ARGV[5])
-- A position ahead of the counter: the client saw ids Redis no longer has.
-- Only that client is reset here; the processes that delivered those ids
-- hold the evidence for the fence (a client's word could be forged).
if after > seq then return {epoch, seq, 'ahead'} end
local result = {epoch, seq, ''}
for i = 4, #KEYS do
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

PUBLISH_SHA = hashlib.sha1(PUBLISH.encode()).hexdigest()
SPUBLISH_SHA = hashlib.sha1(SPUBLISH.encode()).hexdigest()
RESUME_SHA = hashlib.sha1(RESUME.encode()).hexdigest()
