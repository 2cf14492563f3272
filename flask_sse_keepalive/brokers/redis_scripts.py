"""The Lua scripts of the Redis broker, each one atomic round trip.

Both scripts start by making sure the epoch exists. The epoch names one life
of the sequence counter: it is made when either key is missing (an empty or
flushed Redis, or keys deleted by hand), so an id handed out before that can
never be taken for a position in the new history.

Every stream entry carries ``p``, the seq of the channel's previous entry.
Redis trims a stream from its head only, so the first retained entry's ``p``
is the newest entry trimmed away: a resume after ``a`` is complete exactly
when the first entry after ``a`` has ``p <= a``. (``XINFO STREAM`` reports a
``max-deleted-entry-id``, but ``XADD ... MAXLEN`` trimming does not update it.)
"""

from __future__ import annotations

import hashlib

__all__ = ["PUBLISH", "PUBLISH_SHA", "RESUME", "RESUME_SHA"]

_ENSURE_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if (not epoch) or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0, 'NX')
  redis.call('DEL', KEYS[3])
end
"""

#: KEYS: epoch, seq, heads (hash: channel -> last seq), the channel's stream.
#: ARGV: a new epoch should none exist, history size, channel, pub/sub channel,
#: then the event's field/value pairs (d: data, e: event type, r: retry).
#: Returns ``{epoch, seq}``.
PUBLISH = (
    _ENSURE_EPOCH
    + """
local seq = redis.call('INCR', KEYS[2])
local entry = {'p', redis.call('HGET', KEYS[3], ARGV[3]) or '0'}
for i = 5, #ARGV do entry[#entry + 1] = ARGV[i] end
local id = seq .. '-0'
local added = redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], id, unpack(entry))
if type(added) == 'table' and added.err then
  -- The stream holds ids from a sequence whose counter was lost: nothing in
  -- it belongs to this epoch.
  redis.call('DEL', KEYS[4])
  entry[2] = '0'
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], id, unpack(entry))
end
redis.call('HSET', KEYS[3], ARGV[3], seq)
redis.call('PUBLISH', ARGV[4], epoch .. '\\n' .. seq .. '\\n' .. cjson.encode(entry))
return {epoch, seq}
"""
)

#: KEYS: epoch, seq, heads, then the streams of the subscriber's channels.
#: ARGV: a new epoch should none exist, the client's epoch ('' to go live
#: without replay), the client's seq, a reason to reset for ('' for none),
#: '1' if the position was delivered by this broker (a catch-up) else ''.
#: Returns ``{epoch, seq, status, entries of stream 1, entries of stream 2, ...}``
#: where status is '' (entries follow) or why the stream must be reset.
RESUME = (
    _ENSURE_EPOCH
    + """
local seq = tonumber(redis.call('GET', KEYS[2]))
if ARGV[4] ~= '' then return {epoch, seq, ARGV[4]} end
if ARGV[2] == '' then return {epoch, seq, ''} end
if ARGV[2] ~= epoch then return {epoch, seq, 'unknown-epoch'} end
local after = tonumber(ARGV[3])
if after > seq then
  if ARGV[5] == '1' then
    -- Redis came back behind ids it had handed out (an old snapshot, a
    -- lagging replica): those ids would be handed out again for other
    -- events. A new epoch makes every id from before unknown instead.
    epoch = ARGV[1]
    redis.call('SET', KEYS[1], epoch)
    redis.call('DEL', KEYS[3])
  end
  return {epoch, seq, 'ahead'}
end
local result = {epoch, seq, ''}
for i = 4, #KEYS do
  local entries = redis.call('XRANGE', KEYS[i], '(' .. ARGV[3] .. '-0', '+')
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
RESUME_SHA = hashlib.sha1(RESUME.encode()).hexdigest()
