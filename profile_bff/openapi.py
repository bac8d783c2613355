"""The OpenAPI 3.1 document of the BFF, served at ``GET /openapi.json``.

Written by hand next to the routes of :func:`profile_bff.app.create_app`;
``tests/integration/test_bff_openapi.py`` checks that both list the same (path, method) pairs and runs
schemathesis with every check against it (status codes, content types, response schemas and headers, valid
data accepted and invalid data refused), so each request schema says exactly what the server accepts. Shapes
are those of docs/CONTRACTS.md, "BFF REST"; decimals are JSON strings (``"1.5"``), times RFC 3339 UTC strings.

Every operation has a stable ``operationId`` and one tag (:data:`OPERATIONS`); every response declares the
``X-Request-Id`` header the server always sends (:func:`_with_request_id`).
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_DECIMAL = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["1.5"]}
_SIGNED_DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "examples": ["-2.5"]}
_TIME = {"type": "string", "format": "date-time", "examples": ["2024-08-09T00:00:01.000Z"]}
_BEARER = [{"bearer": []}]
#: The refresh-token cookie: ``__Host-refresh_token`` over HTTPS, ``refresh_token`` on a plain-HTTP mesh
#: (``BFF_COOKIE_SECURE=false``); either scheme authenticates.
_REFRESH_COOKIE = [{"refreshCookie": []}, {"refreshCookiePlain": []}]
#: ``Retry-After`` (RFC 9110 §10.2.3): whole seconds to wait.
_RETRY_AFTER = {"description": "seconds to wait (RFC 9110 §10.2.3)", "schema": {"type": "integer", "minimum": 1}}
#: The session cookies a response sets or clears (docs/CONTRACTS.md, "BFF REST").
_SET_COOKIE = {
    "description": "the refresh-token cookie (HttpOnly; SameSite=Strict; Secure and __Host- over HTTPS), set or "
    "cleared; on login also the login-device cookie",
    "schema": {"type": "string"},
}


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
    """The error answers of ``statuses`` (the error JSON); 429 with ``Retry-After``, 503 with it when auth
    is overloaded, 401 with the ``WWW-Authenticate`` challenge when a bearer token was wanted."""
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
    return {str(status): _error(status, reasons[status]) for status in statuses}


def _error(status: int, description: str) -> dict[str, Any]:
    """One error answer (the error JSON) with the headers the server sends with ``status``."""
    if status == 429:
        return _rate_limited(description)
    answer = _json(_ERROR, description)
    if status == 503:
        answer["headers"] = {"Retry-After": _RETRY_AFTER}
    elif status == 401:
        answer["headers"] = {
            "WWW-Authenticate": {
                "description": 'the challenge (RFC 6750 §3) when a bearer token was wanted: Bearer realm="crypto-mesh"',
                "schema": {"type": "string"},
            }
        }
    return answer


def _rate_limited(description: str) -> dict[str, Any]:
    """A 429 error answer with its ``Retry-After`` (RFC 9110 §10.2.3, whole seconds)."""
    return {**_json(_ERROR, description), "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """A required JSON request body of ``schema``."""
    return {"required": True, "content": {"application/json": {"schema": schema}}}


#: A new password (auth/passwords.py): 8 characters to 72 bytes of UTF-8 (bcrypt's limit), after NFKC.
_NEW_PASSWORD = {
    "type": "string",
    "minLength": 8,
    "maxLength": 72,
    "description": "8 characters to 72 bytes in UTF-8 (bcrypt's limit; a character outside ASCII takes 2 to 4)",
}
#: Registration: the name's form after NFKC and stripping (auth/passwords.py, ``normalize_name``).
_REGISTRATION = _body(
    {
        "type": "object",
        "required": ["name", "password"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9_.\-]{3,32}$",
                "description": "3 to 32 ASCII letters, digits, '_', '.' and '-' (unique regardless of case)",
                "examples": ["alice"],
            },
            "password": _NEW_PASSWORD,
        },
    }
)
#: Login: any name and password (a wrong one is 401, whatever is wrong with it); neither may be blank.
_CREDENTIALS = _body(
    {
        "type": "object",
        "required": ["name", "password"],
        "properties": {
            "name": {"type": "string", "pattern": r"\S", "examples": ["alice"]},
            "password": {"type": "string", "minLength": 1},
        },
    }
)
#: A symbol in a request (crypto_mesh.binance.normalize_symbol): 2 to 20 ASCII letters or digits, any case,
#: spaces around ignored. One the exchange does not list is refused (422 unknown_symbol, or 404).
_SYMBOL = {
    "type": "string",
    "pattern": "^ *[A-Za-z0-9]{2,20} *$",
    "description": "2 to 20 ASCII letters or digits, any case; one the exchange lists",
    "examples": ["btcusdt"],
}
#: A quantity, price or total in a request (profile_bff/portfolio.py ``parse_quantity``, alertrules.py): > 0,
#: at most 20 integer digits and 18 decimal places, as a decimal string or a JSON number (read exactly).
def _non_zero_decimal(pattern: str, number: dict[str, Any], example: str, description: str) -> dict[str, Any]:
    """A non-zero decimal in a request: a string of ``pattern`` (spaces around allowed) that is not zero, or a
    JSON number of schema ``number`` (the server reads both exactly)."""
    text = {"type": "string", "pattern": f"^ *{pattern} *$", "not": {"pattern": r"^ *-?[0.]* *$"}}
    return {"oneOf": [{**text, "examples": [example]}, {"type": "number", **number}], "description": description}


_POSITIVE_AMOUNT = _non_zero_decimal(
    r"[0-9]{1,20}(\.[0-9]{1,18})?",
    {"exclusiveMinimum": 0, "exclusiveMaximum": 1e20, "multipleOf": 1e-18},
    "1.5",
    "> 0, at most 20 integer digits and 18 decimal places",
)
_COIN_BODY = _body(
    {
        "type": "object",
        "required": ["symbol", "quantity"],
        "properties": {"symbol": _SYMBOL, "quantity": _POSITIVE_AMOUNT},
    }
)
def _logout(*, legacy: bool = False) -> dict[str, Any]:
    """``POST /v1/logout``, or its alias ``/v1/auth/logout`` (the original service's route) when ``legacy``."""
    operation = {
        "summary": "Revoke the cookie's session, or with all=true every session of the user",
        "description": (
            "all=true: the user is the one an unexpired Authorization: Bearer token names, else the owner of "
            "the refresh cookie's live session; every refresh-token family of theirs is revoked (401 if "
            "neither proves anyone). Without all, a request without the cookie (or with one of an ended "
            "session) also answers 204. With Authorization: Bearer the cookie's session must be that user's "
            "(403). Access tokens already issued stay valid until they expire. A browser request from another "
            "site is refused (403)."
        ),
        "security": [*_REFRESH_COOKIE, {"bearer": []}, {}],
        "parameters": [{"name": "all", "in": "query", "schema": {"enum": ["true", "false"], "default": "false"}}],
        "responses": {
            "204": {"description": "logged out; the cookie cleared", "headers": {"Set-Cookie": _SET_COOKIE}},
            **_errors(401, 403, 422, 503),
        },
    }
    if legacy:
        operation["summary"] = "The original Crypto-Service's logout route: the same as POST /v1/logout"
        operation["deprecated"] = True
    return operation


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
_TOKEN["headers"] = {"Set-Cookie": _SET_COOKIE}
_SESSION_ERRORS = _errors(400, 401, 413, 415, 422, 429, 503)
_COIN_ERRORS = _errors(400, 401, 404, 413, 415, 422, 429, 503)
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "retries with the same key replay the first answer",
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}
#: ``next_cursor`` of a page of the history or of the firings: an id, 1 to 2^63 − 1.
_ID_CURSOR = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_DURATION = {"type": "string", "pattern": "^[0-9]{1,6}[smh]$", "examples": ["1h"]}
#: Durations in a rule (profile_bff/alertrules.py ``parse_duration``): ``<n>s``, ``<n>m`` or ``<n>h``, spaces
#: around ignored; a window from 1 minute to 24 hours, a cooldown from 0 to 24 hours.
_WINDOW = {
    "type": "string",
    "pattern": (
        "^ *(([6-9][0-9]|[1-9][0-9]{2,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s"
        "|([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m|([1-9]|1[0-9]|2[0-4])h) *$"
    ),
    "description": "1 minute to 24 hours",
    "examples": ["1h"],
}
_COOLDOWN = {
    "type": "string",
    "pattern": (
        "^ *((0|[1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s"
        "|(0|[1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m|(0|[1-9]|1[0-9]|2[0-4])h) *$"
    ),
    "description": "0 to 24 hours; no firing again before it has passed since the last",
    "default": "0s",
    "examples": ["5m"],
}
#: A change in percent (alertrules.py ``_percent``): non-zero, within ±1000, at most 8 decimal places.
_PERCENT = _non_zero_decimal(
    r"-?([0-9]{1,3}(\.[0-9]{1,8})?|1000(\.0{1,8})?)",
    {"minimum": -1000, "maximum": 1000, "multipleOf": 1e-8, "not": {"const": 0}},
    "-5",
    "non-zero, within ±1000, at most 8 decimal places; negative watches a fall",
)
#: Where firings are POSTed (alertrules.py ``_webhook_url``): an https URL without credentials or fragment,
#: at most 2048 ASCII characters; null: none.
_WEBHOOK_URL = {
    "type": ["string", "null"],
    "maxLength": 2048,
    "pattern": (
        r"^https://[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
        r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
        r"(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?(\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?$"
    ),
    "examples": ["https://hooks.example/alerts"],
}


def _rule_body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """One kind of rule body: ``properties`` and the fields every kind shares, no other field."""
    return {
        "type": "object",
        "required": ["kind", *required],
        "properties": {
            **properties,
            "repeat": {"enum": ["once", "every_crossing"], "default": "once"},
            "cooldown": _COOLDOWN,
            "webhook_url": _WEBHOOK_URL,
        },
        "additionalProperties": False,
    }


_ALERT_RULE_BODY = _body(
    {
        "oneOf": [
            _rule_body(
                ["symbol", "price"],
                {"kind": {"enum": ["price_above", "price_below"]}, "symbol": _SYMBOL, "price": _POSITIVE_AMOUNT},
            ),
            _rule_body(
                ["symbol", "percent", "window"],
                {"kind": {"const": "change_percent"}, "symbol": _SYMBOL, "percent": _PERCENT, "window": _WINDOW},
            ),
            _rule_body(
                ["total"],
                {"kind": {"enum": ["portfolio_total_above", "portfolio_total_below"]}, "total": _POSITIVE_AMOUNT},
            ),
        ]
    }
)
_ALERT_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
}
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
#: A time in a query (profile_bff/views/market.py ``parse_time``): Unix ms, or RFC 3339 with an offset.
_MOMENT = {"anyOf": [{"type": "string", "pattern": "^[0-9]{1,15}$"}, {"type": "string", "format": "date-time"}]}
#: The symbol and the selection of candles shared by the market-history routes (crypto_mesh/candles.py).
_CANDLE_PARAMETERS = [
    {
        "name": "symbol",
        "in": "path",
        "required": True,
        "description": "a symbol the exchange lists, any case",
        "schema": _SYMBOL,
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
        "schema": {**_MOMENT, "examples": ["2024-08-08T23:54:00Z", "1723161240000"]},
    },
    {
        "name": "end",
        "in": "query",
        "description": "latest open time, as start; without start the window ends with the newest candle to end",
        "schema": {**_MOMENT, "examples": ["2024-08-09T00:00:00Z"]},
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


#: Each operation's ``operationId`` (stable: generated clients name their methods by it) and its tag.
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("/v1/register", "post"): ("register", "session"),
    ("/v1/login", "post"): ("login", "session"),
    ("/v1/refresh", "post"): ("refreshSession", "session"),
    ("/v1/logout", "post"): ("logout", "session"),
    ("/v1/auth/logout", "post"): ("logoutLegacy", "session"),
    ("/v1/password", "post"): ("changePassword", "session"),
    ("/v1/instruments", "get"): ("searchInstruments", "market"),
    ("/v1/instruments/{symbol}", "get"): ("getInstrument", "market"),
    ("/v1/instruments/{symbol}/candles", "get"): ("listCandles", "market"),
    ("/v1/instruments/{symbol}/indicators", "get"): ("getIndicator", "market"),
    ("/v2/coin/symbols", "get"): ("listCoins", "portfolio"),
    ("/v2/coin/symbol", "post"): ("addCoin", "portfolio"),
    ("/v2/coin/symbol", "patch"): ("updateCoin", "portfolio"),
    ("/v2/coin/symbol", "delete"): ("removeCoin", "portfolio"),
    ("/v2/user/profile", "get"): ("getProfile", "portfolio"),
    ("/v2/user/profile", "delete"): ("deleteProfile", "portfolio"),
    ("/v2/user/profile/ws", "get"): ("openProfileSocket", "portfolio"),
    ("/v2/user/ws-ticket", "post"): ("issueSocketTicket", "portfolio"),
    ("/v2/user/history", "get"): ("listHistory", "portfolio"),
    ("/v2/user/alerts", "post"): ("createAlertRule", "alerts"),
    ("/v2/user/alerts", "get"): ("listAlertRules", "alerts"),
    ("/v2/user/alerts/{id}", "patch"): ("updateAlertRule", "alerts"),
    ("/v2/user/alerts/{id}", "delete"): ("deleteAlertRule", "alerts"),
    ("/v2/user/alerts/events", "get"): ("listAlertEvents", "alerts"),
    ("/v2/user/alerts/events/{alert_id}/ack", "post"): ("ackAlertEvent", "alerts"),
    ("/openapi.json", "get"): ("getOpenApiDocument", "service"),
    ("/", "get"): ("getDashboard", "service"),
    ("/dashboard/{path}", "get"): ("getDashboardFile", "service"),
    ("/healthz", "get"): ("getHealth", "service"),
}
_TAGS = [
    {"name": "session", "description": "register, log in, refresh and end sessions, change the password"},
    {"name": "portfolio", "description": "the user's coins, profile, live profile socket and history"},
    {"name": "alerts", "description": "price and portfolio alert rules and their firings"},
    {"name": "market", "description": "the exchange's instruments, candles and indicators (no login)"},
    {"name": "service", "description": "this document, the dashboard, readiness"},
]
#: The dashboard's validator (RFC 9110 §8.8.3), for If-None-Match.
_ETAG = {"description": "the file's entity tag", "required": True, "schema": {"type": "string"}}
#: On the replayed answer of a retry with the same ``Idempotency-Key``.
_REPLAYED = {"description": "present, true, on an answer replayed for a retry", "schema": {"const": "true"}}
#: ``X-Request-Id``: on every answer (docs/CONTRACTS.md, "BFF REST").
_REQUEST_ID = {
    "description": "the request's id, also in the logs of every service it reached",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}


def openapi_document() -> dict[str, Any]:
    """The document as a JSON-ready dict (a new one per call): the operations of :func:`_paths` with their
    ``operationId`` and tag from :data:`OPERATIONS` and ``X-Request-Id`` on every response."""
    document = _document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operation_id, tag = OPERATIONS[(path, method)]
            operation["operationId"] = operation_id
            operation["tags"] = [tag]
            for response in operation["responses"].values():
                response["headers"] = {**response.get("headers", {}), "X-Request-Id": _REQUEST_ID}
    return document


def _document() -> dict[str, Any]:
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
        "tags": _TAGS,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "refreshCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "__Host-refresh_token",
                    "description": "the refresh-token cookie set by login and refresh over HTTPS",
                },
                "refreshCookiePlain": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "refresh_token",
                    "description": "the same cookie on a plain-HTTP mesh (BFF_COOKIE_SECURE=false), Path=/v1",
                },
            },
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
                    "requestBody": _REGISTRATION,
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
                    "description": (
                        "A browser request from another site is refused (403). With Authorization: Bearer "
                        "(expired allowed) the cookie's session must be that user's, else 401 and it is revoked."
                    ),
                    "security": _REFRESH_COOKIE,
                    "responses": {"200": _TOKEN, **_errors(401, 403, 429, 503)},
                }
            },
            "/v1/logout": {"post": _logout()},
            "/v1/auth/logout": {"post": _logout(legacy=True)},
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
                                        "current_password": {"type": "string", "minLength": 1},
                                        "new_password": _NEW_PASSWORD,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "204": {
                            "description": "changed; every session ended, the cookie cleared",
                            "headers": {"Set-Cookie": _SET_COOKIE},
                        },
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
                            "schema": _SYMBOL,
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
                        "201": {**_json(coin_schema, "added"), "headers": {"Idempotent-Replayed": _REPLAYED}},
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
                    "summary": "Remove a held coin",
                    "description": "A JSON body {\"symbol\"} is read instead when the query has no symbol "
                    "(as the original service's clients send it).",
                    "security": _BEARER,
                    "parameters": [{"name": "symbol", "in": "query", "required": True, "schema": _SYMBOL}],
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
                        {"name": "cursor", "in": "query", "schema": _ID_CURSOR},
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
                        "201": {
                            **_json(rule_schema, "created (with webhook_secret when a webhook_url was given)"),
                            "headers": {"Idempotent-Replayed": _REPLAYED},
                        },
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
                        {"name": "cursor", "in": "query", "schema": _ID_CURSOR},
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
                        "200": {"description": "the page", "content": {"text/html": {}}, "headers": {"ETag": _ETAG}},
                        "304": {
                            "description": "unchanged since the ETag sent in If-None-Match",
                            "headers": {"ETag": _ETAG},
                        },
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
                            "headers": {"ETag": _ETAG},
                        },
                        "304": {
                            "description": "unchanged since the ETag sent in If-None-Match",
                            "headers": {"ETag": _ETAG},
                        },
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
