"""Real Binance data shipped with the project, and how its files are read.

``crypto_mesh/data/binance`` holds recordings and an exchangeInfo snapshot (provenance in its SOURCES.md).
A recording holds one combined-stream frame per line (``{"stream": "btcusdt@trade", "data": {...}}``, exactly
as Binance sent it); any of these files may be gzipped, which the gzip magic bytes tell, not the file name.
"""

from __future__ import annotations

import gzip
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "binance"
#: The recording the replay exchange plays by default: real ``@trade`` frames of btcusdt and ethusdt.
DEFAULT_RECORDING = DATA_DIR / "btcusdt_ethusdt_trade_2024-08-08.jsonl.gz"
#: The exchangeInfo snapshot the BFF lists instruments from by default (Binance exchangeInfo of 2021-10-12).
DEFAULT_EXCHANGE_INFO = DATA_DIR / "exchangeInfo_2021-10-12.json.gz"

GZIP_MAGIC = b"\x1f\x8b"


def read_data_file(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped if they start with the gzip magic bytes ``1f 8b``.

    Raises ``OSError`` if the file cannot be read or is not valid gzip, ``EOFError`` if it is cut short.
    """
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw.startswith(GZIP_MAGIC) else raw


def recording_lines(path: Path) -> list[bytes]:
    """The non-empty lines of a recording (one combined-stream frame each); errors: :func:`read_data_file`."""
    return [line for line in read_data_file(path).splitlines() if line.strip()]
