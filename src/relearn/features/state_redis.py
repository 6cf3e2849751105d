r"""The Redis backend of the streaming state: sorted sets per entity, one Lua script per entity update.

Keys (``{prefix}`` from the settings; ``{id}`` is a hash tag, so one entity's keys share a cluster slot):

* ``u:{id}`` — the user's events, score = event time µs, member = the event as JSON;
* ``m:{id}`` — the merchant's transactions, member = ``transaction_id \\x1f amount``;
* ``c:{id}`` — the merchant's chargebacks, member = ``transaction_id``, score = received time µs;
* ``…:ids`` beside each — transaction ids seen (HSETNX is the idempotency check).

A script (:mod:`relearn.features.state_redis_scripts`) adds its event only if the id is new, drops events
older than the window plus lateness, and reads — atomically, since Redis runs one script at a time. A call
sends every script of a batch (users and merchants) in one pipeline per shard, by SHA (loaded once; again
after a NOSCRIPT, e.g. a restarted server): one round trip per shard. :meth:`RedisBackend.windows_async` is
the same on redis.asyncio clients, for the transformer's event loop (no thread hop, no blocked loop). Times
travel as decimal strings (µs since the epoch exceed Lua's default number formatting). Entities are spread
over the shards by CRC32 of the key. Durability is Redis's: its append-only file is written before the reply
(``appendfsync everysec``, the chart's default, or ``always``), so an acknowledged update survives a kill -9
of the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from relearn.features.state_events import Bounds, Event, MerchantWindow, Mode, UserWindow, encode_user
from relearn.features.state_redis_scripts import SOURCES, decode_windows, member, merchant_window, user_window

ADD_CHUNK = 200  # events per script call: a call blocks the server (~1-2 ms), serving waits behind it

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
        self._urls, self._extra = urls, extra
        self._async: list[redis.asyncio.Redis] = []  # created in the event loop that uses them
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called by SHA: redis-py's Script objects ask SCRIPT EXISTS before every pipeline (a round trip).
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SOURCES.items()}

    def _shard(self, key: str) -> int:
        return zlib.crc32(key.encode()) % len(self.shards) if len(self.shards) > 1 else 0

    def _by_shard(self, calls: list[Call]) -> dict[int, list[int]]:
        by_shard: dict[int, list[int]] = {}
        for i, (_, entity, _, _) in enumerate(calls):
            by_shard.setdefault(self._shard(entity), []).append(i)
        return by_shard

    def _run(self, calls: list[Call]) -> list[Any]:
        """Run ``(script, entity, keys, args)`` calls in one pipeline per shard; results in call order."""
        results: list[Any] = [None] * len(calls)
        for shard, indices in self._by_shard(calls).items():
            replies = self._pipeline(self.shards[shard], [calls[i] for i in indices])
            for i, value in zip(indices, replies, strict=True):
                results[i] = value
        return results

    def _pipeline(self, client: redis.Redis, calls: list[Call]) -> list[Any]:
        """EVALSHA every call in one round trip; scripts the server lacks are loaded and only those rerun."""
        pipe = client.pipeline(transaction=False)
        for name, _, keys, args in calls:
            pipe.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        if missing := [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]:
            # A NOSCRIPT call did not run: loading the scripts and running it again is exact.
            for source in SOURCES.values():
                client.script_load(source)
            for i, value in zip(missing, self._pipeline(client, [calls[i] for i in missing]), strict=True):
                replies[i] = value
        return _checked(replies)

    async def _run_async(self, calls: list[Call]) -> list[Any]:
        """:meth:`_run` on the asyncio clients of the running loop; the shards are asked concurrently."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a client is bound to the loop it was made in
            make = redis.asyncio.Redis.from_url
            self._async = [make(url, socket_timeout=5, **self._extra) for url in self._urls]
            self._loop = loop
        groups = list(self._by_shard(calls).items())
        replies = await asyncio.gather(
            *(self._pipeline_async(self._async[s], [calls[i] for i in indices]) for s, indices in groups)
        )
        results: list[Any] = [None] * len(calls)
        for (_, indices), values in zip(groups, replies, strict=True):
            for i, value in zip(indices, values, strict=True):
                results[i] = value
        return results

    async def _pipeline_async(self, client: redis.asyncio.Redis, calls: list[Call]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for name, _, keys, args in calls:
            pipe.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
        if missing := [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]:
            for source in SOURCES.values():
                await client.script_load(source)
            rerun = await self._pipeline_async(client, [calls[i] for i in missing])
            for i, value in zip(missing, rerun, strict=True):
                replies[i] = value
        return _checked(replies)

    def _keys(self, kind: str, entity: str) -> list[str]:
        base = f"{self.prefix}{kind}:{{{entity}}}"
        return [base, base + ":ids"]

    def _user_call(self, e: Event, b: Bounds, mode: Mode) -> Call:
        args = [mode, e.transaction_id, str(e.time_us), encode_user(e), str(b.user_from), str(b.last_from)]
        args += [str(b.prune_user), self.expiry]
        return "user", e.user_id, self._keys("u", e.user_id), args

    def _merchant_call(self, e: Event, b: Bounds, mode: Mode) -> Call:
        args = [
            mode,
            e.transaction_id,
            str(e.time_us),
            member(e),
            str(b.merchant_mean_from),
            str(b.merchant_24h_from),
            str(b.merchant_30d_from),
            str(b.prune_merchant),
            self.expiry,
        ]
        keys = self._keys("m", e.merchant_id) + self._keys("c", e.merchant_id)
        return "merchant", e.merchant_id, keys, args

    def _both(self, events: list[Event], mode: Mode) -> list[Call]:
        bounds = [Bounds.at(e.time_us, self.lateness_us) for e in events]
        calls = [self._user_call(e, b, mode) for e, b in zip(events, bounds, strict=True)]
        return calls + [self._merchant_call(e, b, mode) for e, b in zip(events, bounds, strict=True)]

    def windows(self, events: list[Event], mode: Mode) -> tuple[list[UserWindow], list[MerchantWindow]]:
        """See :class:`relearn.features.state.Backend`; an add goes in batched script calls."""
        if mode == "add":
            self._stream(self._add_many(events))
            return [], []
        return decode_windows(self._run(self._both(events, mode)), len(events), mode)

    def _stream(self, calls: Iterator[tuple[int, Call]]) -> None:
        """Send each ``(shard, call)`` as soon as it is built, then read the replies.

        The server runs one call while the next is built (a pipeline would wait for all of them), so a
        bootstrap costs about the larger of the client's and the server's time, not their sum.
        """
        open_: dict[int, tuple[Any, list[Call]]] = {}
        try:
            for shard, call in calls:
                if shard not in open_:
                    open_[shard] = (self.shards[shard].connection_pool.get_connection(), [])
                conn, sent = open_[shard]
                name, _, keys, args = call
                conn.send_packed_command(
                    conn.pack_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
                )
                sent.append(call)
            for shard, (conn, sent) in open_.items():
                replies = []
                for _ in sent:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:  # the connection stays in step: keep reading
                        replies.append(exc)
                if missing := [c for c, r in zip(sent, replies, strict=True) if isinstance(r, NoScriptError)]:
                    for source in SOURCES.values():  # a NOSCRIPT call did not run: rerun is exact
                        self.shards[shard].script_load(source)
                    self._pipeline(self.shards[shard], missing)
                _checked([r for r in replies if not isinstance(r, NoScriptError)])
        except BaseException:
            for conn, _ in open_.values():
                conn.disconnect()  # replies may be unread: the connection is out of step
            raise
        finally:
            for shard, (conn, _) in open_.items():
                self.shards[shard].connection_pool.release(conn)

    def _add_many(self, events: list[Event]) -> Iterator[tuple[int, Call]]:
        """``(shard, add_many call)``: per shard and kind, ``ADD_CHUNK`` events each, built lazily."""
        groups: dict[tuple[int, str], list[tuple[Event, Bounds]]] = {}
        for e in events:
            b = Bounds.at(e.time_us, self.lateness_us)
            groups.setdefault((self._shard(e.user_id), "u"), []).append((e, b))
            groups.setdefault((self._shard(e.merchant_id), "m"), []).append((e, b))
        for (shard, kind), items in groups.items():
            for start in range(0, len(items), ADD_CHUNK):
                keys, args = [], [self.expiry, "2" if kind == "u" else "4", kind]
                for e, b in items[start : start + ADD_CHUNK]:
                    if kind == "u":
                        keys += self._keys("u", e.user_id)
                        args += [e.transaction_id, str(e.time_us), encode_user(e), str(b.prune_user)]
                    else:
                        keys += self._keys("m", e.merchant_id) + self._keys("c", e.merchant_id)
                        args += [e.transaction_id, str(e.time_us), member(e), str(b.prune_merchant)]
                yield shard, ("add_many", "", keys, args)

    async def windows_async(
        self, events: list[Event], mode: Mode
    ) -> tuple[list[UserWindow], list[MerchantWindow]]:
        """See :class:`relearn.features.state.Backend`."""
        return decode_windows(await self._run_async(self._both(events, mode)), len(events), mode)

    def users(self, events: list[Event], mode: Mode) -> list[UserWindow]:
        """See :class:`relearn.features.state.Backend`."""
        calls = [self._user_call(e, Bounds.at(e.time_us, self.lateness_us), mode) for e in events]
        results = self._run(calls)
        return [] if mode == "add" else [user_window(r) for r in results]

    def merchants(self, events: list[Event], mode: Mode) -> list[MerchantWindow]:
        """See :class:`relearn.features.state.Backend`."""
        calls = [self._merchant_call(e, Bounds.at(e.time_us, self.lateness_us), mode) for e in events]
        results = self._run(calls)
        return [] if mode == "add" else [merchant_window(r) for r in results]

    def chargebacks(self, items: list[tuple[str, str, int]]) -> int:
        """See :class:`relearn.features.state.Backend`."""
        calls = [
            ("chargeback", merchant, self._keys("c", merchant), [tid, str(t), self.expiry])
            for merchant, tid, t in items
        ]
        return sum(int(v) for v in self._run(calls))

    def close(self) -> None:
        """Close the shards' connection pools (the asyncio ones end with their event loop)."""
        for shard in self.shards:
            shard.close()


Call = tuple[str, str, list[str], list[str]]  # (script, entity, keys, args)


def _checked(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
