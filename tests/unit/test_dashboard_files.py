"""The dashboard's files as the BFF serves them (profile_bff/views/dashboard.py), and the vendored charting
library held to the record ``make vendor`` wrote of it (requirements/vendor.py)."""

from __future__ import annotations

import hashlib
import json
import re

from profile_bff.views.dashboard import DASHBOARD_DIR, DashboardFiles

VENDOR = DASHBOARD_DIR / "vendor"


def test_the_vendored_files_are_those_of_the_npm_release_named_in_its_record():
    source = json.loads((VENDOR / "SOURCE.json").read_text())
    assert source["package"] == "lightweight-charts" and source["license"] == "Apache-2.0"
    assert source["integrity"].startswith("sha512-")
    for name, digest in source["sha256"].items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (VENDOR / "LICENSE").read_text()
    assert "TradingView" in (VENDOR / "NOTICE").read_text()


def test_the_page_has_no_inline_script_or_style_and_loads_nothing_from_another_host():
    page = (DASHBOARD_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script"
    assert "<style" not in page and " style=" not in page, "inline style"
    assert not re.search(
        r"""(src|href)=["']?(https?:)?//""", page.replace('href="https://www.tradingview.com/"', "")
    )
    for script in (DASHBOARD_DIR / "js").glob("*.js"):
        text = script.read_text()
        assert not re.search(r"\bimport\b[^;]*from\s+[\"'](https?:)?//", text), script.name
        assert "innerHTML" not in text and "eval(" not in text, script.name


def test_only_the_files_of_the_directory_are_served_by_their_relative_path():
    served = DashboardFiles().content_types()
    assert {
        "index.html",
        "app.css",
        "js/main.js",
        "vendor/lightweight-charts.standalone.production.mjs",
    } <= set(served)
    assert not any(name.endswith((".json", ".py")) or name.startswith("/") for name in served)
    assert served["js/main.js"] == "text/javascript; charset=utf-8"
