"""exchangeInfo documents for the tests: the shipped snapshot with symbols added or their status changed, and
a file replaced the way the replay exchange notices (``REPLAY_EXCHANGE_INFO_FILE``, launcher/replay/rest.py).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path

from crypto_mesh import jsonutil
from crypto_mesh.binance import DEFAULT_EXCHANGE_INFO


def snapshot_with(statuses: Mapping[str, str]) -> bytes:
    """The shipped exchangeInfo snapshot (JSON bytes) in which each lowercase symbol of ``statuses`` is listed
    with its status: a symbol already listed gets the new status, another is added (quoted in USDT when its
    name ends so, else in BTC)."""
    body = jsonutil.loads(gzip.decompress(DEFAULT_EXCHANGE_INFO.read_bytes()))
    wanted = {symbol.upper(): status for symbol, status in statuses.items()}
    for entry in body["symbols"]:
        if entry["symbol"] in wanted:
            entry["status"] = wanted.pop(entry["symbol"])
    for symbol, status in wanted.items():
        quote = "USDT" if symbol.endswith("USDT") else "BTC"
        body["symbols"].append(
            {"symbol": symbol, "status": status, "baseAsset": symbol.removesuffix(quote), "quoteAsset": quote}
        )
    return jsonutil.dumps(body)


def replace_file(path: Path, content: bytes) -> None:
    """Put ``content`` at ``path`` in one step (write a new file, then rename it over): a reader sees the old
    file or the new one whole, and the new one is another inode, which the replay exchange notices even
    within one tick of the file system's clock."""
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_bytes(content)
    os.replace(fresh, path)
