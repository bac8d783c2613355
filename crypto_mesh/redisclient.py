"""One way for every service to open a Redis client, on a single Redis server or on a Redis Cluster.

The URL decides (docs/CONTRACTS.md, "Redis"):

- ``redis://[user:password@]host:port/db`` or ``rediss://…``: one Redis server (the default), a
  ``redis.asyncio.Redis``;
- ``redis+cluster://[user:password@]host:port[,host:port…]/0`` or ``rediss+cluster://…``: a Redis Cluster, a
  ``redis.asyncio.cluster.RedisCluster`` that learns the slot map (``CLUSTER SLOTS``) from the first of the
  given nodes that answers and sends each command to the master of its key's slot. A cluster has database 0
  only.

What a cluster changes for the callers, and what this module gives them for it:

- every key a Lua script or a ``MULTI`` touches must be passed as ``KEYS`` and hash to one slot (the project's
  keys carry a common hash tag ``{…}`` where they are used together; :func:`same_slot` checks it);
- a multi-key read across slots is split by slot (:func:`mget`);
- redis-py's cluster pipeline refuses ``EVALSHA`` and ``PUBLISH``: :func:`run_scripts` pipelines script calls
  on either kind of client, and several messages are published by one script (the BFF's alerts);
- pub/sub: ``PUBLISH`` reaches every node of a Redis 7 cluster, and a ``SUBSCRIBE`` on any node receives it;
  the cluster client's ``pubsub()`` connects to one node (chosen by the slot of the first channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError

#: A client of either kind.
RedisClient = aioredis.Redis | RedisCluster

#: Key of a symbol's latest SecondStat (docs/CONTRACTS.md, "Redis"): ``price:<symbol>``, as the original
#: service named it.
PRICE_KEY_PREFIX = "price:"
SECONDS_KEY_PREFIX = "seconds:"


def seconds_key(symbol: str) -> str:
    """The list of ``symbol``'s recent SecondStats, ``seconds:<symbol>{price:<symbol>}``: the price key as its
    hash tag, so that the script writing both finds them in one cluster slot."""
    return f"{SECONDS_KEY_PREFIX}{symbol}{{{PRICE_KEY_PREFIX}{symbol}}}"


#: URL schemes that select a Redis Cluster, and the single-server scheme each maps to.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (scheme ``redis+cluster`` or ``rediss+cluster``)."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect(url: str, **options: Any) -> RedisClient:
    """A client for ``url`` (see the module docstring): ``redis.asyncio.Redis.from_url`` for a single server,
    ``RedisCluster`` for a cluster URL, whose extra ``host:port`` entries (comma-separated) are further
    startup nodes. ``options`` are redis-py's connection keywords (``socket_timeout``, ``retry``, …); for a
    cluster, ``max_connections`` is per node. No connection is made yet. Raises ``ValueError`` for a cluster
    URL naming a database other than 0."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme)
    if scheme is None:
        return aioredis.Redis.from_url(url, **options)
    credentials, _, hosts = parts.netloc.rpartition("@")
    first, *others = hosts.split(",")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only")
    netloc = f"{credentials}@{first}" if credentials else first
    single = urlunsplit(parts._replace(scheme=scheme, netloc=netloc, path=""))
    startup = [ClusterNode(*_host_port(entry)) for entry in others]
    options.pop("health_check_interval", None)  # kept per node by the cluster client
    if startup:
        options["startup_nodes"] = startup
    return RedisCluster.from_url(single, **options)


def _host_port(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a cluster node must be host:port, not {entry!r}")
    return host.strip("[]"), int(port)


def same_slot(keys: Sequence[str | bytes]) -> bool:
    """Whether every key of ``keys`` hashes to one cluster slot (CRC16 of the key or of its first non-empty
    ``{…}`` hash tag, modulo 16384: the Redis Cluster specification)."""
    return len({key_slot(key.encode() if isinstance(key, str) else key) for key in keys}) <= 1


async def mget(client: RedisClient, keys: Sequence[str]) -> list[bytes | None]:
    """``MGET keys`` in order; on a cluster, one ``MGET`` per slot (not atomic across slots, which no caller
    here needs: each key is read for itself)."""
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(list(keys))
    return await client.mget(list(keys))


async def pubsub(client: RedisClient, **options: Any) -> PubSub:
    """A new pub/sub object of ``client`` on its own connection (``options``: redis-py's, e.g.
    ``ignore_subscribe_messages``). On a cluster it connects to one node, the master of the first channel's
    slot, from the slot map read here; a Redis 7 cluster delivers every ``PUBLISH`` on every node, so that
    node hears every channel. Raises ``RedisError``/``OSError`` when the slot map cannot be read."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    return client.pubsub(**options)


async def run_scripts(
    client: RedisClient, calls: Sequence[tuple[AsyncScript, Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run each ``(script, keys, args)`` of ``calls`` in one pipelined round trip (one per master on a
    cluster), not as a transaction; returns their results in order. Each script call is atomic by itself, and
    calls on one master run in the order given. Raises ``RedisError``/``OSError`` as the client does.

    A single server gets ``EVALSHA`` by the script's SHA1, sent as it is: redis-py's pipeline would first ask
    ``SCRIPT EXISTS`` in a round trip of its own, every time. A server that does not know a script (restarted,
    or its scripts flushed) answers ``NOSCRIPT`` to the calls of that script, and to them only: the script is
    loaded (``SCRIPT LOAD``) and those calls are run again in a second round trip, after the others. redis-py
    refuses ``EVALSHA`` in a cluster pipeline, since it cannot load a script on the master that answers
    ``NOSCRIPT``: a cluster gets ``EVAL`` with the script's text, which Redis compiles once and caches by its
    SHA1 like a loaded script."""
    pipe = client.pipeline(transaction=False)
    if isinstance(client, RedisCluster):
        for script, keys, args in calls:
            pipe.eval(script.script, len(keys), *keys, *args)
        return await pipe.execute()
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    results = await pipe.execute(raise_on_error=False)
    unknown = [index for index, result in enumerate(results) if isinstance(result, NoScriptError)]
    if unknown:
        for script in {calls[index][0] for index in unknown}:
            await client.script_load(script.script)
        retry = client.pipeline(transaction=False)
        for index in unknown:
            script, keys, args = calls[index]
            retry.evalsha(script.sha, len(keys), *keys, *args)
        for index, result in zip(unknown, await retry.execute(raise_on_error=False)):
            results[index] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results
