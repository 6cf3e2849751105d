"""The Lua side of the Redis streaming state: the scripts, by name, and the decoding of their replies.

One script per entity update (:data:`SOURCES`), run by :class:`relearn.features.state_redis.RedisBackend`
with EVALSHA: each adds its event only if the transaction id is new, prunes what no window can need any
more, and reads the window, atomically (Redis runs one script at a time). Replies carry numbers as
strings where Lua would truncate them; :func:`decode_windows` turns them into the windows of
:mod:`relearn.features.state_events`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relearn.features.state_events import Event, MerchantWindow, Mode, UserWindow

_PRUNE = """
local function prune(events, ids, before, keep_last, tid_of)
  local cut = before
  if keep_last then
    local newest = redis.call('ZREVRANGEBYSCORE', events, '(' .. before, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #newest == 0 then return end
    cut = newest[2]
  end
  local old = redis.call('ZRANGEBYSCORE', events, '-inf', '(' .. cut)
  for _, member in ipairs(old) do redis.call('HDEL', ids, tid_of(member)) end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', events, '-inf', '(' .. cut) end
end
"""

# KEYS: events, ids. ARGV: mode (read, add, observe = add then read), tid, t, member, window from,
# last from, prune before, expiry seconds. Returns the window decoded here (times as integers, amounts as
# exact decimal strings or 'nan', merchants) and the last event {time, country, device} or {}: the client
# parses no JSON.
_USER = (
    _PRUNE
    + """
if ARGV[1] ~= 'read' then
  if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  end
  prune(KEYS[1], KEYS[2], ARGV[7], true, function(m) return cjson.decode(m)[1] end)
  redis.call('EXPIRE', KEYS[1], ARGV[8]); redis.call('EXPIRE', KEYS[2], ARGV[8])
  if ARGV[1] == 'add' then return 0 end
end
local function text(v) if v == cjson.null then return '' end return v end
local window = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[5], '(' .. ARGV[3], 'WITHSCORES')
local times, amounts, merchants, e = {}, {}, {}, nil
for i = 1, #window, 2 do
  e = cjson.decode(window[i])
  times[#times + 1] = tonumber(window[i + 1])
  amounts[#amounts + 1] = e[2] == cjson.null and 'nan' or string.format('%.17g', e[2])
  merchants[#merchants + 1] = text(e[3])
end
local last = {}
if e then
  last = {times[#times], text(e[4]), text(e[5])}  -- the window's newest is the newest in the horizon
else
  local newest = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], ARGV[6], 'WITHSCORES', 'LIMIT', 0, 1)
  if #newest > 0 then
    e = cjson.decode(newest[1])
    last = {tonumber(newest[2]), text(e[4]), text(e[5])}
  end
end
return {times, amounts, merchants, last}
"""
)

# KEYS: transactions, ids, chargebacks, chargeback ids. ARGV: mode, tid, t, member, mean from, 24 h from,
# 30 d from, prune before, expiry seconds. Returns the amount sums as strings: Lua numbers would be
# truncated to integers in the reply.
_MERCHANT = (
    _PRUNE
    + """
local function tid_of(m) return string.match(m, '^(.*)\\31[^\\31]*$') end
if ARGV[1] ~= 'read' then
  if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  end
  prune(KEYS[1], KEYS[2], ARGV[8], false, tid_of)
  prune(KEYS[3], KEYS[4], ARGV[8], false, function(m) return m end)
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[9]) end
  if ARGV[1] == 'add' then return 0 end
end
local members = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[5], '(' .. ARGV[3])
local n, s, ss, centre = 0, 0.0, 0.0, nil
for _, m in ipairs(members) do
  local amount = tonumber(string.match(m, '\\31([^\\31]*)$'))
  if amount then
    if centre == nil then centre = amount end
    local x = amount - centre
    n = n + 1; s = s + x; ss = ss + x * x
  end
end
local before = '(' .. ARGV[3]
return {n, string.format('%.17g', s), string.format('%.17g', ss), string.format('%.17g', centre or 0),
        redis.call('ZCOUNT', KEYS[1], ARGV[6], before), redis.call('ZCOUNT', KEYS[1], ARGV[7], before),
        redis.call('ZCOUNT', KEYS[3], ARGV[7], before)}
"""
)

# KEYS: chargebacks, ids. ARGV: tid, received µs, expiry seconds. Returns 1 if new.
_CHARGEBACK = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3]); redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# Bootstrap: many events per script call (the per-call cost dominates an add). KEYS: each event's keys as
# in _USER (2) or _MERCHANT (4); ARGV: expiry, then per event tid, t, member, prune before. Each entity is
# pruned once, at its latest bound: what pruning after every event ends with, as the bound only moves on.
_ADD_MANY = (
    _PRUNE
    + """
local per, kind = tonumber(ARGV[2]), ARGV[3]
local latest = {}
for i = 0, #KEYS / per - 1 do
  local k, a = i * per, 4 + i * 4
  if redis.call('HSETNX', KEYS[k + 2], ARGV[a], ARGV[a + 1]) == 1 then
    redis.call('ZADD', KEYS[k + 1], ARGV[a + 1], ARGV[a + 2])
  end
  local seen = latest[KEYS[k + 1]]
  if seen == nil or tonumber(ARGV[a + 3]) > tonumber(ARGV[seen[2]]) then latest[KEYS[k + 1]] = {k, a + 3} end
end
local function user_tid(m) return cjson.decode(m)[1] end
local function merchant_tid(m) return string.match(m, '^(.*)\\31[^\\31]*$') end
for _, at in pairs(latest) do
  local k, before = at[1], ARGV[at[2]]
  if kind == 'u' then
    prune(KEYS[k + 1], KEYS[k + 2], before, true, user_tid)
  else
    prune(KEYS[k + 1], KEYS[k + 2], before, false, merchant_tid)
    prune(KEYS[k + 3], KEYS[k + 4], before, false, function(m) return m end)
  end
  for j = 1, per do redis.call('EXPIRE', KEYS[k + j], ARGV[1]) end
end
return 0
"""
)
SOURCES = {"user": _USER, "merchant": _MERCHANT, "chargeback": _CHARGEBACK, "add_many": _ADD_MANY}


def member(e: Event) -> str:
    """A merchant's transaction as stored: the id, unit separator (0x1f), the amount's exact repr or ""."""
    return f"{e.transaction_id}\x1f{'' if e.amount is None else repr(float(e.amount))}"


def decode_windows(results: list[Any], n: int, mode: Mode) -> tuple[list[UserWindow], list[MerchantWindow]]:
    """The users' windows (the first ``n`` replies) and the merchants' (the rest); none for an add."""
    if mode == "add":
        return [], []
    return [user_window(r) for r in results[:n]], [merchant_window(r) for r in results[n:]]


def user_window(reply: list[Any]) -> UserWindow:
    """A user script's reply: times, amounts, merchants and the last event."""
    times, amounts, merchants, last = reply
    return UserWindow(
        times=np.array(times, dtype=np.int64),
        amounts=np.array([float(a) for a in amounts], dtype=np.float64),
        merchants=[m.decode() for m in merchants],
        last=(int(last[0]), last[1].decode(), last[2].decode()) if last else None,
    )


def merchant_window(reply: list[Any]) -> MerchantWindow:
    """A merchant script's reply: the sums of its mean window, its counts and chargebacks."""
    n, s, ss, centre, c24, c30, cb = reply
    return MerchantWindow(
        n=int(n),
        s=float(s),
        ss=float(ss),
        centre=float(centre),
        count_24h=int(c24),
        count_30d=int(c30),
        chargebacks_30d=int(cb),
    )
