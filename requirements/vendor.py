"""Vendor the dashboard's charting library from the npm registry: ``python requirements/vendor.py
[VERSION]`` (``make vendor``; default the registry's ``latest``).

The library is TradingView's ``lightweight-charts`` (Apache-2.0). Its npm release file
``dist/lightweight-charts.standalone.production.mjs`` is one ES module with its one dependency
(``fancy-canvas``) bundled, so the page imports it as it is, with no build step. This script reads the
release's record from the registry (``GET /<name>/<version>``: ``dist.tarball`` and ``dist.integrity``),
downloads the tarball, checks it against the record's SRI integrity (sha512), and writes into
``profile_bff/dashboard/vendor/``: the module, the package's ``LICENSE``, ``NOTICE`` (the attribution the
licence asks for, see :data:`NOTICE`) and ``SOURCE.json`` naming the
version, the tarball, its integrity and the sha256 of each file written (tests/unit/test_dashboard_files.py
holds the files to it). Exit status 1 if the tarball does not match its integrity or lacks a file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
PACKAGE = "lightweight-charts"
#: The files taken from the tarball (``package/`` + this path) and their names in the vendor directory.
FILES = {
    "dist/lightweight-charts.standalone.production.mjs": "lightweight-charts.standalone.production.mjs",
    "LICENSE": "LICENSE",
}
#: The attribution the library's licence asks for (its repository's NOTICE file, which the npm release does
#: not carry): written as ``NOTICE`` beside it, and shown with a link in the page's footer.
NOTICE = "TradingView Lightweight Charts\nCopyright (c) 2023 TradingView, Inc. https://www.tradingview.com/\n"
VENDOR_DIR = Path(__file__).resolve().parent.parent / "profile_bff" / "dashboard" / "vendor"
TIMEOUT_S = 60


def fetch(url: str) -> bytes:
    """The body of ``GET url``; raises ``urllib.error.URLError`` on failure."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.read()


def check_integrity(body: bytes, integrity: str) -> None:
    """Raise ``ValueError`` unless ``body`` matches the SRI string ``integrity`` (``sha512-<base64>``)."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise ValueError(f"unsupported integrity algorithm {algorithm!r}")
    actual = base64.b64encode(hashlib.sha512(body).digest()).decode()
    if actual != expected:
        raise ValueError(f"tarball integrity mismatch: {actual} != {expected}")


def vendor(version: str = "latest", directory: Path = VENDOR_DIR) -> dict:
    """Download ``lightweight-charts@version`` and write :data:`FILES` and ``SOURCE.json`` into
    ``directory``; the record written."""
    record = json.loads(fetch(f"{REGISTRY}/{PACKAGE}/{version}"))
    tarball = fetch(record["dist"]["tarball"])
    check_integrity(tarball, record["dist"]["integrity"])
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for inner, name in FILES.items():
            member = archive.extractfile(f"package/{inner}")
            if member is None:
                raise ValueError(f"{inner} is not a file in the tarball")
            body = member.read()
            (directory / name).write_bytes(body)
            written[name] = hashlib.sha256(body).hexdigest()
    (directory / "NOTICE").write_text(NOTICE)
    source = {
        "package": PACKAGE,
        "version": record["version"],
        "license": record.get("license"),
        "tarball": record["dist"]["tarball"],
        "integrity": record["dist"]["integrity"],
        "sha256": written,
    }
    (directory / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    return source


def main() -> int:
    version = sys.argv[1] if len(sys.argv) > 1 else "latest"
    try:
        source = vendor(version)
    except ValueError as exc:
        print(f"vendor: {exc}", file=sys.stderr)
        return 1
    print(f"vendored {source['package']} {source['version']} into {VENDOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
