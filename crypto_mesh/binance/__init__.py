"""The Binance adapter: the one place of the mesh that knows Binance's spot formats and limits.

Every service and the replay exchange import what they need from here (``from crypto_mesh.binance import
parse_trade_frame``) and keep only their own decisions. The parts, each citing its Binance documentation:

- :mod:`.names`: symbol normalisation, stream names, the ``/ws`` and ``/stream`` endpoints;
- :mod:`.frames`: the combined-stream envelope, trade / aggTrade and mini-ticker payloads and their parsing;
- :mod:`.control`: SUBSCRIBE / UNSUBSCRIBE and the other control messages, their answers and error codes;
- :mod:`.limits`: streams per connection, messages per second, connection attempts, 24 h connection life;
- :mod:`.exchange_info`: the symbol list of ``GET /api/v3/exchangeInfo`` and each symbol's status;
- :mod:`.rest`: the REST requests the mesh makes (``GET /api/v3/exchangeInfo``, the trade history routes
  ``historicalTrades`` and ``aggTrades``), their weights and refusals;
- :mod:`.history`: trade history answers turned into trade stream frames, and back;
- :mod:`.data`: the real Binance data shipped in ``crypto_mesh/data/binance`` and how its files are read.
"""

from crypto_mesh.binance import control
from crypto_mesh.binance.data import (
    DATA_DIR,
    DEFAULT_EXCHANGE_INFO,
    DEFAULT_RECORDING,
    read_data_file,
    recording_lines,
)
from crypto_mesh.binance.exchange_info import (
    TRADING,
    ListedSymbol,
    load_exchange_info,
    parse_exchange_info,
    parse_exchange_info_body,
)
from crypto_mesh.binance.frames import (
    ID_FIELDS,
    MINI_TICKER_EVENT,
    TIME_FIELDS,
    TRADE_ID_FIELDS,
    MalformedFrame,
    MalformedTicker,
    MiniTicker,
    Trade,
    UnknownEvent,
    combined_frame,
    mini_ticker_payload,
    parse_mini_ticker_frame,
    parse_trade_frame,
    payload,
    split_combined,
    stream_of,
    trade_id_field,
)
from crypto_mesh.binance.history import history_element, history_frames, history_payload
from crypto_mesh.binance.limits import (
    CONNECT_ATTEMPTS_WINDOW_S,
    IncomingMessageWindow,
    MAX_CONNECT_ATTEMPTS,
    MAX_CONNECTION_AGE_S,
    MAX_INCOMING_MESSAGES_PER_SECOND,
    MAX_STREAMS_PER_CONNECTION,
    PONG_TIMEOUT_S,
    SERVER_PING_INTERVAL_S,
)
from crypto_mesh.binance.names import (
    AGG_TRADE,
    COMBINED_PATH,
    MINI_TICKER,
    MINI_TICKER_ALL,
    RAW_PATH,
    STREAM_NAME,
    SYMBOL_PATTERN,
    TRADE,
    InvalidSymbol,
    combined_stream_url,
    mini_ticker_stream,
    normalize_symbol,
    parse_stream_path,
    split_stream,
    trade_stream,
)
from crypto_mesh.binance.rest import (
    EXCHANGE_INFO_PATH,
    EXCHANGE_INFO_WEIGHT,
    MAX_TRADE_HISTORY_LIMIT,
    TRADE_HISTORY_ROUTES,
    BinanceRest,
    RestUnavailable,
    exchange_info_url,
    trade_history_url,
)

__all__ = [
    "AGG_TRADE",
    "COMBINED_PATH",
    "CONNECT_ATTEMPTS_WINDOW_S",
    "DATA_DIR",
    "DEFAULT_EXCHANGE_INFO",
    "DEFAULT_RECORDING",
    "EXCHANGE_INFO_PATH",
    "EXCHANGE_INFO_WEIGHT",
    "ID_FIELDS",
    "MAX_CONNECTION_AGE_S",
    "MAX_CONNECT_ATTEMPTS",
    "IncomingMessageWindow",
    "MAX_INCOMING_MESSAGES_PER_SECOND",
    "MAX_STREAMS_PER_CONNECTION",
    "MAX_TRADE_HISTORY_LIMIT",
    "MINI_TICKER",
    "MINI_TICKER_ALL",
    "MINI_TICKER_EVENT",
    "PONG_TIMEOUT_S",
    "RAW_PATH",
    "SERVER_PING_INTERVAL_S",
    "STREAM_NAME",
    "SYMBOL_PATTERN",
    "TIME_FIELDS",
    "TRADE",
    "TRADE_HISTORY_ROUTES",
    "TRADE_ID_FIELDS",
    "TRADING",
    "BinanceRest",
    "InvalidSymbol",
    "ListedSymbol",
    "MalformedFrame",
    "MalformedTicker",
    "MiniTicker",
    "RestUnavailable",
    "Trade",
    "UnknownEvent",
    "combined_frame",
    "combined_stream_url",
    "control",
    "exchange_info_url",
    "history_element",
    "history_frames",
    "history_payload",
    "load_exchange_info",
    "mini_ticker_payload",
    "mini_ticker_stream",
    "normalize_symbol",
    "parse_exchange_info",
    "parse_exchange_info_body",
    "parse_mini_ticker_frame",
    "parse_stream_path",
    "parse_trade_frame",
    "payload",
    "read_data_file",
    "recording_lines",
    "split_combined",
    "split_stream",
    "stream_of",
    "trade_history_url",
    "trade_id_field",
    "trade_stream",
]
