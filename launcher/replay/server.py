"""Transport of the replay exchange: Binance's spot websocket stream protocol over ``websockets``, plus HTTP
``GET /api/v3/exchangeInfo`` (Binance's REST route, :mod:`launcher.replay.rest`), the trade history routes
``GET /api/v3/historicalTrades`` and ``GET /api/v3/aggTrades`` (:mod:`launcher.replay.history`),
``GET /replay/v1/info``, ``GET /metrics`` (Prometheus text, open like every route of this development exchange:
``replay_connections``, ``replay_subscribed_streams``, ``replay_http_requests_total{route,status}``) and
``GET /healthz`` on the same port.

Protocol (Binance spot "WebSocket Streams for Binance", its formats and limits in :mod:`crypto_mesh.binance`):

* ``/ws/<stream>`` and ``/ws/<s1>/<s2>``: raw streams, each message is the payload alone;
  ``/ws``: raw, streams added with SUBSCRIBE;
  ``/stream?streams=<s1>/<s2>`` (or ``/stream``): combined streams, each message is
  ``{"stream": "<name>", "data": <payload>}``.
* Control messages (:mod:`crypto_mesh.binance.control`): ``SUBSCRIBE``/``UNSUBSCRIBE`` → ``{"result": null,
  "id": n}``; ``LIST_SUBSCRIPTIONS`` → ``{"result": [...], "id": n}``; ``SET_PROPERTY``/``GET_PROPERTY`` of
  ``combined``. Errors: ``{"error": {"code": 0..3, "msg": "..."}, "id": n|null}``.
* Limits (:mod:`crypto_mesh.binance.limits`): at most 1024 streams per connection, at most 5 incoming messages
  per second (a connection that sends more is closed), a connection lives at most 24 h, the server pings every
  20 s and closes a connection whose pong does not arrive within a minute.

Each recording is played by one :class:`_Playback` from server start, whether or not anyone listens, and every
frame is serialised at most once per form (raw, combined), as a whole websocket frame, and the same bytes are
written for every subscriber.
Data messages (frames, control answers) are written as they are made, each as one unmasked TEXT frame
(``websockets.frames.Frame.serialize``) straight to the connection's transport, in order: ``websockets``'
``send()`` costs about 10 µs of CPU a message, which made the replay the slowest part of the market-path
benchmark at ``--speed 0``; ``websockets`` still does the handshake, the pings and the close. A subscriber
whose unsent data passes :data:`SEND_BUFFER_BYTES` (it reads slower than the replay) is disconnected with code
1008.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from crypto_mesh import binance, jsonutil
from crypto_mesh.binance import MINI_TICKER_ALL, control
from crypto_mesh.binance.rest import USED_WEIGHT_HEADER
from crypto_mesh.logs import get_logger
from crypto_mesh.metrics import Declared, gauge, metrics_registry
from crypto_mesh.observe import UNMATCHED
from launcher.replay.history import PlayPosition, TradeHistory
from launcher.replay.minitickers import MiniTickers
from launcher.replay.recording import Recording, Timeline, floor_second, load_recording
from launcher.replay.rest import UNKNOWN, ExchangeInfoFile, HistoryQueryError, RequestWeights, history_query
from launcher.replay.settings import ReplaySettings

log = get_logger(__name__)

#: Unsent bytes of one connection beyond which it is considered too slow and closed: about 20,000 trade
#: frames.
SEND_BUFFER_BYTES = 4 * 1024 * 1024
#: Control messages are small; Binance does not document a size limit, this one keeps a client from
#: buffering megabytes in the server.
MAX_INCOMING_MESSAGE_BYTES = 64 * 1024


class ProtocolError(ValueError):
    """A client request that Binance would refuse; ``code`` is Binance's error code
    (:mod:`crypto_mesh.binance.control`)."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def parse_path(path: str) -> tuple[bool, list[str]] | None:
    """``(combined, streams)`` of a websocket request path, or None if the path is not a stream endpoint.

    Raises :class:`ProtocolError` for a malformed stream name or more than 1024 streams.
    """
    parsed = binance.parse_stream_path(path)
    if parsed is None:
        return None
    combined, names = parsed
    return combined, _check_streams(names, already=0)


def _check_streams(names: object, already: int) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ProtocolError(control.INVALID_REQUEST, "Invalid request: params must be a list of stream names")
    for name in names:
        if not binance.STREAM_NAME.fullmatch(name):
            raise ProtocolError(
                control.INVALID_REQUEST, f"Invalid request: invalid stream name {name[:64]!r}"
            )
    if already + len(set(names)) > binance.MAX_STREAMS_PER_CONNECTION:
        raise ProtocolError(
            control.INVALID_REQUEST,
            f"Invalid request: at most {binance.MAX_STREAMS_PER_CONNECTION} streams per connection",
        )
    return list(dict.fromkeys(names))


def text_frame(message: bytes) -> bytes:
    """``message`` (UTF-8 JSON) as one unmasked TEXT frame, the bytes a server writes (RFC 6455 5.2)."""
    return Frame(Opcode.TEXT, message).serialize(mask=False)


class _Client:
    """One websocket connection: its streams, its incoming-message rate; messages to it are written at once
    (module doc)."""

    def __init__(self, ws: ServerConnection, combined: bool) -> None:
        self.ws = ws
        self.combined = combined
        self.streams: dict[str, None] = {}
        self.closing: asyncio.Task[None] | None = None
        self.incoming = binance.IncomingMessageWindow()

    def offer(self, frame: bytes) -> bool:
        """Write ``frame`` (a whole TEXT frame, :func:`text_frame`); False when the connection is closing, or is
        being closed now because more than :data:`SEND_BUFFER_BYTES` wait unsent."""
        ws = self.ws
        if self.closing is not None or ws.state is not State.OPEN:
            return False
        transport = ws.transport
        transport.write(frame)
        unsent = transport.get_write_buffer_size()
        if unsent > SEND_BUFFER_BYTES:
            log.warning("slow_consumer_closed", remote=str(ws.remote_address), unsent_bytes=unsent)
            self.close(1008, "slow consumer: send buffer full")
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = asyncio.get_running_loop().create_task(self.ws.close(code, reason))


class _Hub:
    """Who listens to what: connections and, per stream, its subscribed connections (pruned when empty)."""

    def __init__(self) -> None:
        self.clients: set[_Client] = set()
        self.subscribers: dict[str, set[_Client]] = {}

    def subscribe(self, client: _Client, streams: list[str]) -> None:
        for stream in streams:
            client.streams[stream] = None
            self.subscribers.setdefault(stream, set()).add(client)

    def unsubscribe(self, client: _Client, streams: list[str]) -> None:
        for stream in streams:
            client.streams.pop(stream, None)
            listeners = self.subscribers.get(stream)
            if listeners is not None:
                listeners.discard(client)
                if not listeners:
                    del self.subscribers[stream]

    def remove(self, client: _Client) -> None:
        self.unsubscribe(client, list(client.streams))
        self.clients.discard(client)

    def publish(self, stream: str, data: Any) -> None:
        """Write ``data`` of ``stream`` to its subscribers, serialised at most once per form."""
        listeners = self.subscribers.get(stream)
        if not listeners:
            return
        raw = combined = None
        for client in tuple(listeners):
            if client.combined:
                if combined is None:
                    combined = text_frame(binance.combined_frame(stream, data))
                delivered = client.offer(combined)
            else:
                if raw is None:
                    raw = text_frame(jsonutil.dumps(data))
                delivered = client.offer(raw)
            if not delivered:
                self.remove(client)


@dataclass
class _Playback:
    """The one global playback of a recording: frames in file order, paced by ``E`` at ``speed``, looping."""

    timeline: Timeline
    hub: _Hub
    speed: float
    ticker_streams: frozenset[str]
    started_at_ms: int
    position: PlayPosition = field(default_factory=PlayPosition)

    async def run(self) -> None:
        recording = self.timeline.recording
        loop_clock = asyncio.get_running_loop()
        start = loop_clock.time()
        origin_ms = recording.first_event_ms + self.timeline.time_shift_ms
        tickers = MiniTickers()
        open_second: int | None = None
        paced = 0
        k = 0

        async def until(replay_ms: int) -> None:
            nonlocal paced
            if self.speed > 0:
                delay = start + (replay_ms - origin_ms) / 1000 / self.speed - loop_clock.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                    paced = 0
                    return
            paced += 1
            if paced >= 64:
                # Let the writers and the handlers run between bursts of frames that are already due.
                paced = 0
                await asyncio.sleep(0)

        position = self.position
        while True:
            shift = self.timeline.shift_ms(k)
            for index, frame in enumerate(recording.frames):
                event_ms = frame.event_ms + shift
                if open_second is not None and event_ms >= open_second + 1000:
                    await until(open_second + 1000)
                    self._publish_tickers(tickers.close_second(open_second + 1000))
                    open_second = None
                await until(event_ms)
                # From here the frame is played: the trade history answers it.
                position.loop, position.index = k, index + 1
                needed = frame.stream in self.hub.subscribers
                is_trade = frame.stream in self.ticker_streams
                if not (needed or is_trade):
                    continue
                data = self.timeline.shifted(frame, k)
                if needed:
                    self.hub.publish(frame.stream, data)
                if is_trade:
                    tickers.add_trade(data["s"], data["p"], data["q"], data.get("T", event_ms))
                    open_second = floor_second(event_ms)
            k += 1

    def _publish_tickers(self, tickers: list[dict[str, Any]]) -> None:
        if not tickers:
            return
        self.hub.publish(MINI_TICKER_ALL, tickers)
        for ticker in tickers:
            self.hub.publish(binance.mini_ticker_stream(ticker["s"]), ticker)


def _ticker_streams(recordings: list[Recording]) -> list[frozenset[str]]:
    """Per recording, the trade streams that feed mini-tickers: each symbol from the first recording that has
    it, so two recordings of one symbol do not publish two tickers for it."""
    claimed: set[str] = set()
    result = []
    for recording in recordings:
        mine = {stream for symbol, stream in recording.trade_streams.items() if symbol not in claimed}
        claimed.update(recording.trade_streams)
        result.append(frozenset(mine))
    return result


@dataclass
class Running:
    """A serving replay exchange: ``port`` (bound TCP port), ``url`` (``ws://host:port``), ``stop()``."""

    port: int
    url: str
    _server: Server
    _tasks: list[asyncio.Task[None]]

    async def stop(self) -> None:
        """Stop the playbacks, close every connection (code 1001) and release the port."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server.close()
        await self._server.wait_closed()


class _Exchange:
    """Handlers of the websocket endpoints and of the HTTP routes."""

    def __init__(
        self,
        settings: ReplaySettings,
        playbacks: list[_Playback],
        hub: _Hub,
        exchange_info: ExchangeInfoFile,
    ) -> None:
        self.settings = settings
        self.playbacks = playbacks
        self.hub = hub
        self.exchange_info = exchange_info
        self.weights = RequestWeights(settings.request_weight_per_minute)
        self.history = TradeHistory([(playback.timeline, playback.position) for playback in playbacks])
        #: ``replay_http_requests_total{route,status}``: HTTP requests answered (route: a path of this module's
        #: docstring, ``websocket`` for a stream's handshake, ``unmatched`` for the rest).
        self.requests = Counter(
            "replay_http_requests", "HTTP requests answered, by route and status.", ("route", "status"), registry=None
        )
        self.registry = metrics_registry("replay", _METRICS, self, self.requests)

    def info(self) -> dict[str, Any]:
        return {
            "recordings": [
                {**playback.timeline.info(), "started_at_ms": playback.started_at_ms}
                for playback in self.playbacks
            ],
            "speed": self.settings.speed,
            "connections": len(self.hub.clients),
            "subscriptions": {
                stream: len(clients) for stream, clients in sorted(self.hub.subscribers.items())
            },
        }

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        response = self._route(request, path)
        if response is None:
            route, status = "websocket", 101
        else:
            route, status = (path if path in _ROUTES else UNMATCHED), response.status_code
        self.requests.labels(route, str(status)).inc()
        return response

    def _route(self, request: Request, path: str) -> Response | None:
        if path == "/metrics":
            return _response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path == "/replay/v1/info":
            return _json_response(200, self.info())
        if path == "/healthz":
            return _json_response(200, {"status": "ok"})
        if path == binance.EXCHANGE_INFO_PATH:
            return self.exchange_info_response(request)
        if path in _HISTORY_KINDS:
            return self.trade_history_response(_HISTORY_KINDS[path], request)
        try:
            parsed = parse_path(request.path)
        except ProtocolError as exc:
            return _json_response(400, {"code": exc.code, "msg": exc.msg})
        if parsed is None:
            return _json_response(404, {"code": 404, "msg": "not found"})
        return None

    def exchange_info_response(self, request: Request) -> Response:
        """``GET /api/v3/exchangeInfo``: the current document, within the request weight (module
        :mod:`launcher.replay.rest`)."""
        used, retry_after_s = self.weights.spend(binance.EXCHANGE_INFO_WEIGHT, time.time())
        weight = [(USED_WEIGHT_HEADER, str(used))]
        if retry_after_s is not None:
            return _json_response(429, self.weights.refusal(), [*weight, ("Retry-After", str(retry_after_s))])
        try:
            document = self.exchange_info.current()
        except (OSError, ValueError) as exc:
            log.error("exchange_info_unreadable", error=str(exc))
            unknown = {"code": UNKNOWN, "msg": "An unknown error occurred while processing the request."}
            return _json_response(500, unknown, weight)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            gzipped = [*weight, ("Content-Encoding", "gzip")]
            return _response(200, document.gzipped, "application/json", gzipped)
        return _response(200, document.body, "application/json", weight)

    def trade_history_response(self, kind: str, request: Request) -> Response:
        """``GET /api/v3/historicalTrades`` (``kind`` ``"trade"``) or ``GET /api/v3/aggTrades`` (``"aggTrade"``):
        the played trades of the recording from ``fromId`` on (:mod:`launcher.replay.history`), within the
        request weight (:mod:`launcher.replay.rest`)."""
        weight = binance.TRADE_HISTORY_ROUTES[kind][1]
        used, retry_after_s = self.weights.spend(weight, time.time())
        headers = [(USED_WEIGHT_HEADER, str(used))]
        if retry_after_s is not None:
            return _json_response(
                429, self.weights.refusal(), [*headers, ("Retry-After", str(retry_after_s))]
            )
        try:
            symbol, from_id, limit = history_query(urlsplit(request.path).query, self.history.symbols())
        except HistoryQueryError as exc:
            return _json_response(400, {"code": exc.code, "msg": exc.msg}, headers)
        return _json_response(200, self.history.elements(kind, symbol, from_id, limit), headers)

    async def handle(self, ws: ServerConnection) -> None:
        parsed = parse_path(ws.request.path)
        assert parsed is not None  # process_request refused every other path
        combined, streams = parsed
        client = _Client(ws, combined)
        self.hub.clients.add(client)
        self.hub.subscribe(client, streams)
        try:
            async with asyncio.timeout(binance.MAX_CONNECTION_AGE_S):
                async for message in ws:
                    if not client.incoming.admit(time.monotonic()):
                        log.info("rate_limit_closed", remote=str(ws.remote_address))
                        limit = binance.MAX_INCOMING_MESSAGES_PER_SECOND
                        client.close(1008, f"too many messages: at most {limit} per second")
                        break
                    client.offer(text_frame(jsonutil.dumps(self._control(client, message))))
        except TimeoutError:
            client.close(1000, "connection reached its 24 h limit")
        except ConnectionClosed:
            pass
        finally:
            self.hub.remove(client)
            if client.closing is not None:
                await asyncio.gather(client.closing, return_exceptions=True)

    def _control(self, client: _Client, message: str | bytes) -> dict[str, Any]:
        """Answer one control message (see the module docstring); never raises for bad input."""
        request_id: Any = None
        try:
            try:
                request = jsonutil.loads(message)
            except jsonutil.JSONDecodeError as exc:
                raise ProtocolError(control.INVALID_JSON, f"Invalid JSON: {exc}") from exc
            if not isinstance(request, dict):
                raise ProtocolError(control.INVALID_REQUEST, "Invalid request: expected a JSON object")
            request_id = request.get("id")
            if not _valid_id(request_id):
                request_id = None
                raise ProtocolError(
                    control.INVALID_REQUEST, "Invalid request: request ID must be an unsigned integer"
                )
            method, params = request.get("method"), request.get("params", [])
            if method == control.SUBSCRIBE:
                fresh = [name for name in _check_streams(params, 0) if name not in client.streams]
                _check_streams(fresh, len(client.streams))
                self.hub.subscribe(client, fresh)
                return control.result(None, request_id)
            if method == control.UNSUBSCRIBE:
                self.hub.unsubscribe(client, _check_streams(params, 0))
                return control.result(None, request_id)
            if method == control.LIST_SUBSCRIPTIONS:
                return control.result(list(client.streams), request_id)
            if method == control.SET_PROPERTY:
                if not (
                    isinstance(params, list) and len(params) == 2 and params[0] == control.COMBINED_PROPERTY
                ):
                    raise ProtocolError(control.UNKNOWN_PROPERTY, "Unknown property")
                if not isinstance(params[1], bool):
                    raise ProtocolError(control.INVALID_VALUE_TYPE, "Invalid value type: expected Boolean")
                client.combined = params[1]
                return control.result(None, request_id)
            if method == control.GET_PROPERTY:
                if params != [control.COMBINED_PROPERTY]:
                    raise ProtocolError(control.UNKNOWN_PROPERTY, "Unknown property")
                return control.result(client.combined, request_id)
            if method is None:
                raise ProtocolError(control.INVALID_REQUEST, "Invalid request: missing field `method`")
            raise ProtocolError(
                control.INVALID_REQUEST,
                f"Invalid request: unknown variant {str(method)[:32]!r}, expected one of SUBSCRIBE, UNSUBSCRIBE, "
                "LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY",
            )
        except ProtocolError as exc:
            return control.error(exc.code, exc.msg, request_id)


#: The trade history routes and the trade stream kind each answers.
_HISTORY_KINDS = {
    binance.rest.HISTORICAL_TRADES_PATH: binance.TRADE,
    binance.rest.AGG_TRADES_PATH: binance.AGG_TRADE,
}

#: Paths counted by their own name in ``replay_http_requests_total``.
_ROUTES = frozenset(
    {"/metrics", "/replay/v1/info", "/healthz", binance.EXCHANGE_INFO_PATH, *_HISTORY_KINDS}
)

_METRICS: tuple[Declared[_Exchange], ...] = (
    gauge("connections", "WebSocket connections open now.", lambda exchange: len(exchange.hub.clients)),
    gauge(
        "subscribed_streams",
        "Streams with at least one subscriber now.",
        lambda exchange: sum(1 for clients in exchange.hub.subscribers.values() if clients),
    ),
)


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return (
        value is None
        or (isinstance(value, int) and 0 <= value < 2**63)
        or (isinstance(value, str) and len(value) <= 36)
    )


def _json_response(status: int, body: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
    return _response(status, jsonutil.dumps(body), "application/json", headers)


def _response(
    status: int, payload: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    fields = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Type", content_type),
            ("Content-Length", str(len(payload))),
            ("Connection", "close"),
            *headers,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, fields, payload)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("playback_crashed", task=task.get_name(), exc_info=task.exception())


async def start(settings: ReplaySettings) -> Running:
    """Load the recordings, start their playbacks and serve; returns once the port is bound.

    ``settings.port`` 0 binds a free port (``Running.port``). Raises
    :class:`~launcher.replay.recording.RecordingError` for a recording that cannot be replayed, ``OSError``
    if the port cannot be bound or the exchangeInfo file read, ``ValueError`` if that file is no exchangeInfo
    body.
    """
    recordings = [load_recording(path) for path in settings.files]
    exchange_info = ExchangeInfoFile(settings.exchange_info_file)
    now_ms = time.time_ns() // 1_000_000
    hub = _Hub()
    playbacks = [
        _Playback(Timeline.starting_at(recording, now_ms), hub, settings.speed, streams, now_ms)
        for recording, streams in zip(recordings, _ticker_streams(recordings), strict=True)
    ]
    exchange = _Exchange(settings, playbacks, hub, exchange_info)
    connections_log = logging.getLogger("launcher.replay.connections")
    if connections_log.level == logging.NOTSET:
        # websockets logs every connection and HTTP request at INFO: noise when the mesh polls /healthz.
        connections_log.setLevel(logging.WARNING)
    server = await serve(
        exchange.handle,
        settings.host,
        settings.port,
        process_request=exchange.process_request,
        ping_interval=binance.SERVER_PING_INTERVAL_S,
        ping_timeout=binance.PONG_TIMEOUT_S,
        max_size=MAX_INCOMING_MESSAGE_BYTES,
        compression=None,
        logger=connections_log,
    )
    tasks = []
    for playback in playbacks:
        task = asyncio.create_task(playback.run(), name=f"replay:{playback.timeline.recording.path.name}")
        task.add_done_callback(_report_crash)
        tasks.append(task)
    port = server.sockets[0].getsockname()[1]
    for playback in playbacks:
        log.info("replaying", **playback.timeline.info(), speed=settings.speed)
    log.info("serving", host=settings.host, port=port)
    return Running(port=port, url=f"ws://{settings.host}:{port}", _server=server, _tasks=tasks)
