"""Control messages on a Binance stream connection: live subscribing and its answers.

Source: Binance spot API documentation, "WebSocket Streams for Binance"
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams), sections "Live
Subscribing/Unsubscribing to streams" and "Error Messages"::

    → {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
    ← {"result": null, "id": 1}
    → {"method": "LIST_SUBSCRIPTIONS", "id": 3}
    ← {"result": ["btcusdt@trade"], "id": 3}
    ← {"error": {"code": 2, "msg": "Invalid request: ..."}, "id": null}
"""

from __future__ import annotations

from typing import Any

SUBSCRIBE = "SUBSCRIBE"
UNSUBSCRIBE = "UNSUBSCRIBE"
LIST_SUBSCRIPTIONS = "LIST_SUBSCRIPTIONS"
SET_PROPERTY = "SET_PROPERTY"
GET_PROPERTY = "GET_PROPERTY"
#: The one property of a connection: whether its frames are wrapped in the combined-stream envelope.
COMBINED_PROPERTY = "combined"

#: Error codes of section "Error Messages".
UNKNOWN_PROPERTY = 0
INVALID_VALUE_TYPE = 1
INVALID_REQUEST = 2
INVALID_JSON = 3


def request(method: str, params: list[Any], request_id: int) -> dict[str, Any]:
    """A control request, e.g. ``request(SUBSCRIBE, ["btcusdt@trade"], 1)``."""
    return {"method": method, "params": params, "id": request_id}


def result(value: Any, request_id: Any) -> dict[str, Any]:
    """The answer to a request that succeeded: ``value`` is None, a list of streams or a property's value."""
    return {"result": value, "id": request_id}


def error(code: int, msg: str, request_id: Any) -> dict[str, Any]:
    """The answer to a request that failed; ``request_id`` None when the request had no valid id."""
    return {"error": {"code": code, "msg": msg}, "id": request_id}
