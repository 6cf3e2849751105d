r"""The Redis backend of the streaming state: sorted sets per entity, one Lua script per entity update.

Keys (``{prefix}`` from the settings; ``{id}`` is a hash tag, so one entity's keys share a cluster slot):

* ``u:{id}`` — the user's events, score = event time µs, member = the event as JSON;
* ``m:{id}`` — the merchant's transactions, member = ``transaction_id \\x1f amount``;
* ``c:{id}`` — the merchant's chargebacks, member = ``transaction_id``, score = received time µs;
* ``…:ids`` beside each — transaction ids seen (HSETNX is the idempotency check).

A script adds its event only if the id is new, drops events older than the window plus lateness, and
reads — atomically, since Redis runs one script at a time. Times travel as decimal strings (µs since
the epoch exceed Lua's default number formatting). Entities are spread over the shards by CRC32 of the key.
Durability is Redis's: with ``appendfsync always`` (the chart's and the tests' setting) an acknowledged
update survives a kill -9 of the server.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import redis

from relearn.features.state import Bounds, Event, MerchantWindow, Mode, UserWindow, decode_user, encode_user

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
# last from, prune before, expiry seconds.
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
local window = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[5], '(' .. ARGV[3], 'WITHSCORES')
local last = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], ARGV[6], 'WITHSCORES', 'LIMIT', 0, 1)
return {window, last}
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

# Idle entities expire on the wall clock once nothing of them can be in a window any more.
EXPIRY_SECONDS = 31 * 24 * 3600


class RedisBackend:
    """Raw events in Redis, sharded by entity key; see the module docstring."""

    def __init__(self, urls: list[str], prefix: str, password: str | None, lateness_us: int = 0) -> None:
        if not urls:
            raise ValueError("RELEARN_STATE_REDIS_URLS lists no Redis URL")
        extra: dict[str, Any] = {"password": password} if password else {}
        self.shards = [redis.Redis.from_url(url, socket_timeout=5, **extra) for url in urls]
        self.prefix = prefix
        self.lateness_us = lateness_us
        self.expiry = str(EXPIRY_SECONDS + lateness_us // 1_000_000)
        self._scripts = [
            {name: shard.register_script(src) for name, src in _SOURCES.items()} for shard in self.shards
        ]

    def _shard(self, key: str) -> int:
        return zlib.crc32(key.encode()) % len(self.shards)

    def _run(self, calls: list[tuple[str, str, list[str], list[str]]]) -> list[Any]:
        """Run ``(script, entity, keys, args)`` calls in one pipeline per shard; results in call order."""
        results: list[Any] = [None] * len(calls)
        by_shard: dict[int, list[int]] = {}
        for i, (_, entity, _, _) in enumerate(calls):
            by_shard.setdefault(self._shard(entity), []).append(i)
        for shard, indices in by_shard.items():
            pipe = self.shards[shard].pipeline(transaction=False)
            for i in indices:
                name, _, keys, args = calls[i]
                self._scripts[shard][name](keys=keys, args=args, client=pipe)
            for i, value in zip(indices, pipe.execute(), strict=True):
                results[i] = value
        return results

    def _keys(self, kind: str, entity: str) -> list[str]:
        base = f"{self.prefix}{kind}:{{{entity}}}"
        return [base, base + ":ids"]

    def users(self, events: list[Event], mode: Mode) -> list[UserWindow]:
        """See :class:`relearn.features.state.Backend`."""
        calls = []
        for e in events:
            b = Bounds.at(e.time_us, self.lateness_us)
            args = [mode, e.transaction_id, e.time_us, encode_user(e), b.user_from, b.last_from]
            args += [b.prune_user, self.expiry]
            calls.append(("user", e.user_id, self._keys("u", e.user_id), [str(a) for a in args]))
        if mode == "add":
            self._run(calls)
            return []
        out = []
        for window, last in self._run(calls):
            decoded = [decode_user(m) for m in window[0::2]]
            newest = None
            if last:
                _, _, _, country, device = decode_user(last[0])
                newest = (int(float(last[1])), country or "", device or "")
            out.append(
                UserWindow(
                    times=np.array([int(float(t)) for t in window[1::2]], dtype=np.int64),
                    amounts=np.array([np.nan if d[1] is None else d[1] for d in decoded], dtype=np.float64),
                    merchants=[d[2] for d in decoded],
                    last=newest,
                )
            )
        return out

    def merchants(self, events: list[Event], mode: Mode) -> list[MerchantWindow]:
        """See :class:`relearn.features.state.Backend`."""
        calls = []
        for e in events:
            b = Bounds.at(e.time_us, self.lateness_us)
            amount = "" if e.amount is None else repr(float(e.amount))
            args = [
                mode,
                e.transaction_id,
                e.time_us,
                f"{e.transaction_id}\x1f{amount}",
                b.merchant_mean_from,
                b.merchant_24h_from,
                b.merchant_30d_from,
                b.prune_merchant,
                self.expiry,
            ]
            keys = self._keys("m", e.merchant_id) + self._keys("c", e.merchant_id)
            calls.append(("merchant", e.merchant_id, keys, [str(a) for a in args]))
        results = self._run(calls)
        if mode == "add":
            return []
        return [
            MerchantWindow(
                n=int(n),
                s=float(s),
                ss=float(ss),
                centre=float(centre),
                count_24h=int(c24),
                count_30d=int(c30),
                chargebacks_30d=int(cb),
            )
            for n, s, ss, centre, c24, c30, cb in results
        ]

    def chargebacks(self, items: list[tuple[str, str, int]]) -> int:
        """See :class:`relearn.features.state.Backend`."""
        calls = [
            ("chargeback", merchant, self._keys("c", merchant), [tid, str(t), self.expiry])
            for merchant, tid, t in items
        ]
        return sum(int(v) for v in self._run(calls))

    def close(self) -> None:
        """Close the shards' connection pools."""
        for shard in self.shards:
            shard.close()


_SOURCES = {"user": _USER, "merchant": _MERCHANT, "chargeback": _CHARGEBACK}
