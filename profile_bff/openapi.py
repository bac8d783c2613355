"""The OpenAPI 3.1 document of the BFF, served at ``GET /openapi.json``.

Written by hand next to the routes of :func:`profile_bff.app.create_app`; ``tests/test_bff_openapi.py``
checks that both list the same (path, method) pairs and runs schemathesis against it. Shapes are those of
docs/CONTRACTS.md, "BFF REST"; decimals are JSON strings (``"1.5"``), times RFC 3339 UTC strings.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_DECIMAL = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["1.5"]}
_SIGNED_DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "examples": ["-2.5"]}
_TIME = {"type": "string", "format": "date-time", "examples": ["2024-08-09T00:00:01.000Z"]}
_BEARER = [{"bearer": []}]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _page(key: str, item: dict[str, Any]) -> dict[str, Any]:
    """A page of a paged list: ``{key: [item, ...], "next_cursor": string or null}``."""
    return {
        "type": "object",
        "required": [key, "next_cursor"],
        "properties": {key: {"type": "array", "items": item}, "next_cursor": {"type": ["string", "null"]}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "malformed request",
        401: "no, invalid or expired credentials",
        403: "forbidden",
        404: "not found",
        409: "conflict",
        413: "body over 64 KiB",
        415: "body not JSON",
        422: "invalid value",
        429: "rate-limited",
        503: "a dependency is unavailable, or auth is overloaded (then with Retry-After, s)",
    }
    return {
        str(status): _rate_limited(reasons[status]) if status == 429 else _json(_ERROR, reasons[status])
        for status in statuses
    }


def _rate_limited(description: str) -> dict[str, Any]:
    """A 429 error answer with its ``Retry-After`` (RFC 9110 §10.2.3, whole seconds)."""
    return {
        **_json(_ERROR, description),
        "headers": {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
        },
    }


_CREDENTIALS = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["name", "password"],
                "properties": {"name": {"type": "string"}, "password": {"type": "string"}},
            }
        }
    },
}
_COIN_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["symbol", "quantity"],
                "properties": {
                    "symbol": {"type": "string", "examples": ["btcusdt"]},
                    "quantity": {"oneOf": [_DECIMAL, {"type": "number", "exclusiveMinimum": 0}]},
                },
            }
        }
    },
}
_TOKEN = _json(
    {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "minimum": 0},
        },
    },
    "an access token; the refresh token is set as an HttpOnly cookie (__Host-refresh_token over HTTPS, "
    "refresh_token on a plain-HTTP mesh)",
)
_SESSION_ERRORS = _errors(400, 401, 413, 415, 422, 429, 503)
_COIN_ERRORS = _errors(400, 401, 404, 413, 415, 422, 429, 503)
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "retries with the same key replay the first answer",
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}
_DURATION = {"type": "string", "pattern": "^[0-9]{1,6}[smh]$", "examples": ["1h"]}
_AMOUNT = {"oneOf": [_DECIMAL, {"type": "number", "exclusiveMinimum": 0}]}
#: The fields every rule kind shares (profile_bff/alertrules.py).
_RULE_COMMON = {
    "repeat": {"enum": ["once", "every_crossing"], "default": "once"},
    "cooldown": _DURATION,
    "webhook_url": {"type": "string", "format": "uri", "examples": ["https://hooks.example/alerts"]},
}
_ALERT_RULE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["kind", "symbol", "price"],
                        "properties": {
                            "kind": {"enum": ["price_above", "price_below"]},
                            "symbol": {"type": "string", "examples": ["btcusdt"]},
                            "price": _AMOUNT,
                            **_RULE_COMMON,
                        },
                    },
                    {
                        "type": "object",
                        "required": ["kind", "symbol", "percent", "window"],
                        "properties": {
                            "kind": {"const": "change_percent"},
                            "symbol": {"type": "string", "examples": ["ethusdt"]},
                            "percent": {"oneOf": [_SIGNED_DECIMAL, {"type": "number"}]},
                            "window": _DURATION,
                            **_RULE_COMMON,
                        },
                    },
                    {
                        "type": "object",
                        "required": ["kind", "total"],
                        "properties": {
                            "kind": {"enum": ["portfolio_total_above", "portfolio_total_below"]},
                            "total": _AMOUNT,
                            **_RULE_COMMON,
                        },
                    },
                ]
            }
        }
    },
}
_ALERT_ID_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
#: An instrument as ``GET /v1/instruments`` lists it: price and its time are the newer of the 24 h ticker's
#: close and the latest SecondStat; change_percent and quote_volume are the 24 h ticker's (null without one).
_INSTRUMENT_PROPERTIES = {
    "symbol": {"type": "string"},
    "type": {"type": "string"},
    "base": {"type": "string"},
    "quote": {"type": "string"},
    "status": {"type": "string"},
    "price": {"oneOf": [_DECIMAL, {"type": "null"}]},
    "price_time": {"oneOf": [_TIME, {"type": "null"}]},
    "change_percent": {"oneOf": [_SIGNED_DECIMAL, {"type": "null"}]},
    "quote_volume": {"oneOf": [_DECIMAL, {"type": "null"}]},
}
_INSTRUMENT = {
    "type": "object",
    "required": list(_INSTRUMENT_PROPERTIES),
    "properties": _INSTRUMENT_PROPERTIES,
}
#: The 24 h ticker of ``GET /v1/instruments/{symbol}``.
_TICKER_PROPERTIES = {
    **{name: _DECIMAL for name in ("close", "open", "high", "low", "volume", "quote_volume")},
    "change_price": _SIGNED_DECIMAL,
    "change_percent": _SIGNED_DECIMAL,
    "event_time": _TIME,
}
#: 429 of the per-address limits of the public routes (profile_bff/ceilings.py), with Retry-After.
_PUBLIC_LIMIT = {"429": _rate_limited("too many requests from this address")}
#: The symbol and the selection of candles shared by the market-history routes (crypto_mesh/candles.py).
_CANDLE_PARAMETERS = [
    {
        "name": "symbol",
        "in": "path",
        "required": True,
        "description": "a symbol the exchange lists, any case",
        "schema": {"type": "string", "examples": ["btcusdt"]},
    },
    {
        "name": "interval",
        "in": "query",
        "schema": {"enum": ["1s", "1m", "5m", "15m", "1h", "1d"], "default": "1m"},
    },
    {
        "name": "start",
        "in": "query",
        "description": (
            "earliest open time: RFC 3339 with an offset (2024-08-08T23:54:00Z) or Unix ms; given, the "
            "window of limit periods begins with the oldest candle from start (paging forwards)"
        ),
        "schema": {"type": "string", "examples": ["2024-08-08T23:54:00Z", "1723161240000"]},
    },
    {
        "name": "end",
        "in": "query",
        "description": "latest open time, as start; without start the window ends with the newest candle to end",
        "schema": {"type": "string", "examples": ["2024-08-09T00:00:00Z"]},
    },
    {
        "name": "limit",
        "in": "query",
        "description": "periods in the window (periods without trades have no candle); at most 1000",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 500},
    },
]
_MARKET_ERRORS = {
    "404": _json(_ERROR, "the exchange lists no such symbol (unknown_symbol)"),
    "422": _json(
        _ERROR,
        "invalid_interval, invalid_range, invalid_limit, invalid_indicator, or too_many_points (over 1000, "
        "named in the message)",
    ),
    "503": _json(_ERROR, "market history (the ETL) is unavailable"),
    **_PUBLIC_LIMIT,
}


def openapi_document() -> dict[str, Any]:
    """The document as a JSON-ready dict (a new one per call)."""
    coin_schema = {"$ref": "#/components/schemas/Coin"}
    rule_schema = {"$ref": "#/components/schemas/AlertRule"}
    alert_schema = {"$ref": "#/components/schemas/Alert"}
    instrument_schema = {"$ref": "#/components/schemas/Instrument"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "crypto-mesh BFF",
            "version": "2.0.0",
            "description": "Portfolio REST API and live profile WebSocket (docs/CONTRACTS.md).",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "AlertRule": {
                    "type": "object",
                    "required": ["id", "kind", "repeat", "cooldown", "webhook_url", "paused", "created_at"],
                    "properties": {
                        "id": {"type": "integer"},
                        "kind": {
                            "enum": [
                                "price_above",
                                "price_below",
                                "change_percent",
                                "portfolio_total_above",
                                "portfolio_total_below",
                            ]
                        },
                        "symbol": {"type": "string"},
                        "price": _DECIMAL,
                        "percent": _SIGNED_DECIMAL,
                        "window": _DURATION,
                        "total": _DECIMAL,
                        "repeat": {"enum": ["once", "every_crossing"]},
                        "cooldown": _DURATION,
                        "webhook_url": {"type": ["string", "null"]},
                        "webhook_secret": {
                            "type": "string",
                            "description": "the webhook signing secret, answered only at creation",
                        },
                        "paused": {"type": "boolean"},
                        "created_at": _TIME,
                    },
                },
                "Alert": {
                    "type": "object",
                    "description": "A firing; on the profile socket told from a Profile by its type",
                    "required": [
                        "type",
                        "alert_id",
                        "rule_id",
                        "kind",
                        "symbol",
                        "price",
                        "second",
                        "value",
                        "fired_at",
                        "acked",
                    ],
                    "properties": {
                        "type": {"const": "alert"},
                        "alert_id": {"type": "string", "format": "uuid"},
                        "rule_id": {"type": "integer"},
                        "kind": {"type": "string"},
                        "symbol": {"type": "string"},
                        "price": _DECIMAL,
                        "second": {"type": "integer", "description": "the SecondStat's t, Unix ms"},
                        "value": _SIGNED_DECIMAL,
                        "fired_at": _TIME,
                        "acked": {"type": "boolean"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Coin": {
                    "type": "object",
                    "required": ["symbol", "quantity"],
                    "properties": {"symbol": {"type": "string"}, "quantity": _DECIMAL},
                },
                "Instrument": _INSTRUMENT,
                "Ticker": {
                    "description": "the rolling 24 h ticker of the exchange's last mini-ticker; "
                    "change_price = close − open, change_percent = (close − open) / open × 100 rounded "
                    "half-even to 8 places",
                    "type": "object",
                    "required": list(_TICKER_PROPERTIES),
                    "properties": _TICKER_PROPERTIES,
                },
                "Profile": {
                    "type": "object",
                    "required": ["ID", "Name", "Coins", "Total", "PricesAt"],
                    "properties": {
                        "ID": {"type": "integer"},
                        "Name": {"type": "string"},
                        "Coins": {
                            "type": "object",
                            "required": ["Quantities", "Prices", "Totals", "PriceTimes"],
                            "properties": {
                                "Quantities": {"type": "object", "additionalProperties": _DECIMAL},
                                "Prices": {"type": "object", "additionalProperties": _DECIMAL},
                                "Totals": {"type": "object", "additionalProperties": _DECIMAL},
                                "PriceTimes": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        },
                        "Total": _DECIMAL,
                        "PricesAt": {"type": ["string", "null"]},
                    },
                },
            },
        },
        "paths": {
            "/v1/register": {
                "post": {
                    "summary": "Create a user and its profile",
                    "requestBody": _CREDENTIALS,
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["id", "name"],
                                "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
                            },
                            "created",
                        ),
                        **_errors(400, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/login": {
                "post": {
                    "summary": "Open a session",
                    "description": (
                        "Also sets an HttpOnly login-device cookie: later logins of this client for this "
                        "name are throttled on their own, so others' failed guesses do not lock it out. "
                        "429 with Retry-After when the failed-login budgets are spent."
                    ),
                    "requestBody": _CREDENTIALS,
                    "responses": {"200": _TOKEN, **_SESSION_ERRORS},
                }
            },
            "/v1/refresh": {
                "post": {
                    "summary": "Rotate the refresh-token cookie and get a new access token",
                    "description": "A browser request from another site is refused (403).",
                    "responses": {"200": _TOKEN, **_errors(401, 403, 429, 503)},
                }
            },
            "/v1/logout": {
                "post": {
                    "summary": "Revoke the cookie's session, or with all=true every session of the user",
                    "description": (
                        "all=true: the user is the one an unexpired Authorization: Bearer token names, "
                        "else the owner of the refresh cookie's live session; every refresh-token family "
                        "of theirs is revoked. Access tokens already issued stay valid until they expire. "
                        "A browser request from another site is refused (403)."
                    ),
                    "parameters": [
                        {
                            "name": "all",
                            "in": "query",
                            "schema": {"enum": ["true", "false"], "default": "false"},
                        }
                    ],
                    "responses": {"204": {"description": "logged out"}, **_errors(401, 403, 422, 503)},
                }
            },
            "/v1/password": {
                "post": {
                    "summary": "Change the password; every session of the user ends",
                    "description": (
                        "The refresh cookie is cleared and every refresh-token family revoked: log in again "
                        "with the new password. Access tokens already issued stay valid until they expire. "
                        "403: the current password is wrong (counted as a failed login)."
                    ),
                    "security": _BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["current_password", "new_password"],
                                    "properties": {
                                        "current_password": {"type": "string"},
                                        "new_password": {"type": "string", "minLength": 8},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "204": {"description": "changed; every session ended"},
                        **_errors(400, 401, 403, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/instruments": {
                "get": {
                    "summary": "Search the exchange's symbols, most traded first (no login needed)",
                    "description": "Symbols containing q: the exact match, then those starting with q, then "
                    "the rest, each by 24 h quote volume (descending; without a ticker last, by symbol). "
                    "Pass next_cursor as cursor, with the same q, for the next page.",
                    "parameters": [
                        {
                            "name": "q",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{0,20}$"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "next_cursor of the previous page (opaque); absent or empty: the "
                            "first page",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            _page("instruments", instrument_schema),
                            "matching instruments in rank order, and the cursor of the next page (null on "
                            "the last)",
                        ),
                        **_errors(422, 503),
                        **_PUBLIC_LIMIT,
                    },
                }
            },
            "/v1/instruments/{symbol}": {
                "get": {
                    "summary": "One listed symbol, its 24 h ticker, whether the mesh has live data of it",
                    "parameters": [
                        {
                            "name": "symbol",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "examples": ["btcusdt"]},
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "allOf": [
                                    instrument_schema,
                                    {
                                        "type": "object",
                                        "required": ["ticker", "live", "last_second"],
                                        "properties": {
                                            "ticker": {
                                                "oneOf": [
                                                    {"$ref": "#/components/schemas/Ticker"},
                                                    {"type": "null"},
                                                ]
                                            },
                                            "live": {
                                                "description": "null: the mesh does not follow the symbol; "
                                                "false: its latest second started over 60 s ago",
                                                "type": ["boolean", "null"],
                                            },
                                            "last_second": {"oneOf": [_TIME, {"type": "null"}]},
                                        },
                                    },
                                ]
                            },
                            "the instrument",
                        ),
                        **_errors(404, 422, 503),
                        **_PUBLIC_LIMIT,
                    },
                }
            },
            "/v1/instruments/{symbol}/candles": {
                "get": {
                    "summary": "Candles of a listed symbol, oldest first, the newest current (no login)",
                    "parameters": _CANDLE_PARAMETERS,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["symbol", "interval", "candles"],
                                "properties": {
                                    "symbol": {"type": "string"},
                                    "interval": {"type": "string"},
                                    "candles": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": [
                                                "open_time",
                                                "close_time",
                                                "open",
                                                "high",
                                                "low",
                                                "close",
                                                "volume",
                                                "quote_volume",
                                                "trades",
                                            ],
                                            "properties": {
                                                "open_time": _TIME,
                                                "close_time": _TIME,
                                                "open": _DECIMAL,
                                                "high": _DECIMAL,
                                                "low": _DECIMAL,
                                                "close": _DECIMAL,
                                                "volume": _DECIMAL,
                                                "quote_volume": _DECIMAL,
                                                "trades": {"type": "integer", "minimum": 0},
                                            },
                                        },
                                    },
                                },
                            },
                            "the candles of the window",
                        ),
                        **_MARKET_ERRORS,
                    },
                }
            },
            "/v1/instruments/{symbol}/indicators": {
                "get": {
                    "summary": "An indicator over the candles of a listed symbol (no login needed)",
                    "description": (
                        "Computed over the candles .../candles answers for the same interval, start, end and "
                        "limit; a point per candle from the first that has a value. Formulas, sources and "
                        "rounding (18 decimal places): docs/ANALYTICS.md, Indicators."
                    ),
                    "parameters": [
                        *_CANDLE_PARAMETERS,
                        {
                            "name": "name",
                            "in": "query",
                            "required": True,
                            "schema": {"enum": ["sma", "ema", "rsi", "volatility"]},
                        },
                        {
                            "name": "period",
                            "in": "query",
                            "description": "default 20 (sma, ema, volatility) or 14 (rsi)",
                            "schema": {"type": "integer", "minimum": 2, "maximum": 1000},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["symbol", "interval", "name", "period", "points"],
                                "properties": {
                                    "symbol": {"type": "string"},
                                    "interval": {"type": "string"},
                                    "name": {"type": "string"},
                                    "period": {"type": "integer"},
                                    "points": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["open_time", "value"],
                                            "properties": {"open_time": _TIME, "value": _DECIMAL},
                                        },
                                    },
                                },
                            },
                            "the indicator's values",
                        ),
                        **_MARKET_ERRORS,
                    },
                }
            },
            "/v2/coin/symbols": {
                "get": {
                    "summary": "The user's coins",
                    "security": _BEARER,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["coins"],
                                "properties": {"coins": {"type": "array", "items": coin_schema}},
                            },
                            "coins sorted by symbol",
                        ),
                        **_errors(401, 404, 503),
                    },
                }
            },
            "/v2/coin/symbol": {
                "post": {
                    "summary": "Add a coin (TRADING symbols of the exchange only)",
                    "security": _BEARER,
                    "parameters": [_IDEMPOTENCY_KEY],
                    "requestBody": _COIN_BODY,
                    "responses": {
                        "201": _json(coin_schema, "added"),
                        **_COIN_ERRORS,
                        "409": _json(
                            _ERROR,
                            "already held (coin_already_held), the portfolio holds BFF_MAX_COINS_PER_USER "
                            "coins (coin_limit_reached), or the same Idempotency-Key is in flight",
                        ),
                        "429": _rate_limited("over BFF_WRITE_RATE_PER_USER"),
                    },
                },
                "patch": {
                    "summary": "Set a held coin's quantity",
                    "security": _BEARER,
                    "requestBody": _COIN_BODY,
                    "responses": {"200": _json(coin_schema, "updated"), **_COIN_ERRORS},
                },
                "delete": {
                    "summary": "Remove a held coin (symbol in the query or a JSON body)",
                    "security": _BEARER,
                    "parameters": [{"name": "symbol", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"204": {"description": "removed"}, **_COIN_ERRORS},
                },
            },
            "/v2/user/profile": {
                "get": {
                    "summary": "The profile with latest prices",
                    "security": _BEARER,
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Profile"}, "the profile"),
                        **_errors(401, 404, 503),
                    },
                },
                "delete": {
                    "summary": "Delete the profile and the user",
                    "security": _BEARER,
                    "responses": {"204": {"description": "deleted"}, **_errors(401, 429, 503)},
                },
            },
            "/v2/user/profile/ws": {
                "get": {
                    "summary": "Live profile over WebSocket (RFC 6455 upgrade)",
                    "description": (
                        "Credentials: Authorization: Bearer <token>, or Sec-WebSocket-Protocol: bearer, <token> "
                        "(the server echoes bearer), or ?ticket=<ticket> from POST /v2/user/ws-ticket. Messages: "
                        "the Profile at once and after each change. Close codes: 1001 shutdown, 1003 binary "
                        "frame, 1009 frame over 4 KiB, 4401 token expired, 4404 profile deleted."
                    ),
                    "parameters": [{"name": "ticket", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "101": {"description": "switching to WebSocket"},
                        **_errors(400, 401, 403, 404, 503),
                        "429": _json(
                            _ERROR,
                            "too many upgrades from this address (rate_limited, with Retry-After), or the "
                            "user already holds BFF_MAX_SOCKETS_PER_USER open sockets (too_many_sockets)",
                        ),
                    },
                }
            },
            "/v2/user/ws-ticket": {
                "post": {
                    "summary": "A single-use WebSocket ticket",
                    "security": _BEARER,
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["ticket", "expires_in"],
                                "properties": {
                                    "ticket": {"type": "string"},
                                    "expires_in": {"type": "integer"},
                                },
                            },
                            "the ticket and its lifetime in seconds",
                        ),
                        **_errors(401, 503),
                        "429": _rate_limited("over BFF_WS_TICKET_RATE_PER_USER"),
                    },
                }
            },
            "/v2/user/history": {
                "get": {
                    "summary": "Portfolio and alert rule changes, newest first",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["items", "next_cursor"],
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": [
                                                "id",
                                                "alert_id",
                                                "symbol",
                                                "operation",
                                                "old_quantity",
                                                "new_quantity",
                                                "at",
                                            ],
                                            "properties": {
                                                "id": {"type": "integer"},
                                                "alert_id": {"type": ["integer", "null"]},
                                                "symbol": {"type": ["string", "null"]},
                                                "operation": {
                                                    "enum": [
                                                        "add",
                                                        "update",
                                                        "remove",
                                                        "alert_create",
                                                        "alert_pause",
                                                        "alert_resume",
                                                        "alert_delete",
                                                    ]
                                                },
                                                "old_quantity": {"oneOf": [_DECIMAL, {"type": "null"}]},
                                                "new_quantity": {"oneOf": [_DECIMAL, {"type": "null"}]},
                                                "at": {"type": "string"},
                                            },
                                        },
                                    },
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            },
                            "a page of the history",
                        ),
                        **_errors(401, 422, 503),
                    },
                }
            },
            "/v2/user/alerts": {
                "post": {
                    "summary": "Create an alert rule (listed TRADING symbols only)",
                    "security": _BEARER,
                    "parameters": [_IDEMPOTENCY_KEY],
                    "requestBody": _ALERT_RULE_BODY,
                    "responses": {
                        "201": _json(rule_schema, "created (with webhook_secret when a webhook_url was given)"),
                        **_errors(400, 401, 404, 413, 415, 422, 503),
                        "409": _json(
                            _ERROR,
                            "the user has BFF_MAX_ALERTS_PER_USER rules (alert_limit_reached), or the same "
                            "Idempotency-Key is in flight",
                        ),
                        "429": _rate_limited("over BFF_WRITE_RATE_PER_USER"),
                    },
                },
                "get": {
                    "summary": "The user's alert rules, oldest first",
                    "security": _BEARER,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["alerts"],
                                "properties": {"alerts": {"type": "array", "items": rule_schema}},
                            },
                            "the rules",
                        ),
                        **_errors(401, 503),
                    },
                },
            },
            "/v2/user/alerts/{id}": {
                "patch": {
                    "summary": "Pause or resume an alert rule",
                    "security": _BEARER,
                    "parameters": [_ALERT_ID_PARAMETER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["paused"],
                                    "properties": {"paused": {"type": "boolean"}},
                                }
                            }
                        },
                    },
                    "responses": {"200": _json(rule_schema, "the rule"), **_errors(400, 401, 404, 413, 415, 422, 429, 503)},
                },
                "delete": {
                    "summary": "Delete an alert rule (its firings stay)",
                    "security": _BEARER,
                    "parameters": [_ALERT_ID_PARAMETER],
                    "responses": {"204": {"description": "deleted"}, **_errors(401, 404, 429, 503)},
                },
            },
            "/v2/user/alerts/events": {
                "get": {
                    "summary": "The user's alert firings, newest first",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                        {"name": "unacked", "in": "query", "schema": {"enum": ["true", "false"]}},
                    ],
                    "responses": {
                        "200": _json(_page("items", alert_schema), "a page of firings"),
                        **_errors(401, 422, 503),
                    },
                }
            },
            "/v2/user/alerts/events/{alert_id}/ack": {
                "post": {
                    "summary": "Acknowledge a firing: it is no longer sent when a socket connects",
                    "security": _BEARER,
                    "parameters": [
                        {"name": "alert_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"204": {"description": "acknowledged"}, **_errors(401, 404, 503)},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}},
                        **_PUBLIC_LIMIT,
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "The dashboard: the web page of this API (HTML; docs/CONTRACTS.md, \"Dashboard\")",
                    "responses": {
                        "200": {"description": "the page", "content": {"text/html": {}}},
                        "304": {"description": "unchanged since the ETag sent in If-None-Match"},
                    },
                }
            },
            "/dashboard/{path}": {
                "get": {
                    "summary": "One file of the dashboard (scripts, stylesheet, the vendored charting library)",
                    "parameters": [
                        {
                            "name": "path",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "examples": ["js/main.js"]},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "the file",
                            "content": {"text/javascript": {}, "text/css": {}, "image/svg+xml": {}},
                        },
                        "304": {"description": "unchanged since the ETag sent in If-None-Match"},
                        **_errors(404),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": _json({"type": "object"}, "ready"),
                        "503": _json({"type": "object"}, "starting or degraded"),
                    },
                }
            },
        },
    }
