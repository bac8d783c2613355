"""The dashboard at ``/``, in a real browser (Debian's chromium driven by Playwright), against the real BFF,
auth, PostgreSQL, Redis and an ETL on chDB: a user signs up, adds two coins (one found by the search as
they type), sees the total follow the prices pushed over the WebSocket, opens a candle chart, reloads and
stays signed in, and signs out.

Prices are SecondStats published on Redis as the aggregator publishes them (the fake aggregator answers the
BFF's control calls). Every profile the page receives is read from its WebSocket frames, and every total it
shows is checked against them with exact decimals. The page's security headers are checked over plain HTTP.
A screenshot of each step is kept when the test fails (the failure names where); with
``DASHBOARD_SCREENSHOT=<path>`` the dashboard's screenshot for the README is written there.
"""

from __future__ import annotations

import json
import os
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.async_api import Page, expect
from support.bff import PASSWORD, Bff, new_name, new_symbol, wait_until_subscribed
from support.browser import Steps, chromium
from support.databases import new_database
from support.fake_aggregator import FakeAggregator
from support.polling import eventually
from support.stacks import serve_auth, serve_bff, serve_etl, serve_stack

from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from support.ports import free_port
from crypto_mesh.redisclient import seconds_key
from profile_bff.views.dashboard import PAGE_CSP


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, kafka_bootstrap, tmp_path_factory):
    async with (
        serve_etl(kafka_bootstrap, tmp_path_factory.mktemp("dashboard") / "chdb") as etl,
        # Plain HTTP on 127.0.0.1, as `crypto-mesh up` serves it; no BFF_ALLOWED_ORIGINS: the page's own
        # origin must be enough for the WebSocket and the refresh cookie.
        serve_stack(
            postgres, redis_url, tmp_path_factory, etl_url=f"http://127.0.0.1:{etl.port}", cookie_secure=False
        ) as running,
    ):
        yield running


async def publish(bff: Bff, symbol: str, open_: Decimal, close: Decimal, second_ms: int) -> None:
    """A second of two trades (at ``open_``, then ``close``) as the aggregator writes it: ``price:<symbol>``
    set, the second appended to ``seconds:<symbol>`` (the candles' live seconds), then published on channel
    ``<symbol>``."""
    second = SecondStat(
        symbol, second_ms, open_, max(open_, close), min(open_, close), close, Decimal(2), open_ + close, 2, 2
    )
    stat = jsonutil.dumps(second.to_json())
    await bff.redis.set(f"price:{symbol}", stat)
    await bff.redis.rpush(seconds_key(symbol), stat)
    await bff.redis.publish(symbol, stat)


def shown_decimal(text: str) -> Decimal:
    """A decimal the page shows grouped by thousands ("1,234.5") as a ``Decimal``."""
    return Decimal(text.replace(",", ""))


def check_profile(profile: dict) -> None:
    """Each coin's total is quantity × price and the total their sum, exactly."""
    coins = profile["Coins"]
    for symbol, total in coins["Totals"].items():
        assert Decimal(total) == Decimal(coins["Quantities"][symbol]) * Decimal(coins["Prices"][symbol])
    assert Decimal(profile["Total"]) == sum((Decimal(t) for t in coins["Totals"].values()), Decimal(0))


async def add_coin(page: Page, symbol: str, quantity: str) -> None:
    await page.get_by_label("Symbol", exact=True).fill(symbol)
    await page.get_by_label("Quantity", exact=True).fill(quantity)
    await page.get_by_role("button", name="Add", exact=True).click()


async def test_the_page_is_served_with_a_policy_that_allows_only_its_own_origin(bff):
    for path in (
        "/",
        "/dashboard/js/main.js",
        "/dashboard/vendor/lightweight-charts.standalone.production.mjs",
    ):
        async with bff.http.get(f"{bff.url}{path}") as resp:
            assert resp.status == 200, path
            assert resp.headers["Content-Security-Policy"] == PAGE_CSP
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.content_type in ("text/html", "text/javascript")
            etag = resp.headers["ETag"]
        async with bff.http.get(f"{bff.url}{path}", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
    async with bff.http.get(f"{bff.url}/dashboard/../settings.py") as resp:
        assert resp.status == 404
    async with bff.http.get(f"{bff.url}/v2/coin/symbols") as resp:
        assert resp.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


async def test_a_user_signs_up_watches_the_portfolio_live_charts_a_coin_reloads_and_signs_out(
    bff, tmp_path_factory
):
    first, second = new_symbol(), new_symbol()
    quantities = {first: Decimal("1.5"), second: Decimal(2)}
    name = new_name()
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 1100})
        page = await context.new_page()
        steps = Steps(page, tmp_path_factory.mktemp("dashboard-steps"))
        frames: list[dict] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(json.loads(data))))
        uncaught: list[str] = []
        page.on("pageerror", lambda error: uncaught.append(str(error)))
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if m.type == "error" else None)

        async with steps.step("sign up"):
            await page.goto(bff.url)
            await page.get_by_label("Name").fill(name)
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Create account").click()
            await expect(page.locator("#user-name")).to_have_text(name)
            await expect(page.locator("#connection")).to_have_text("Live")

        async with steps.step("add two coins"):
            await add_coin(page, first, "-1")
            await expect(page.locator("#coin-error")).to_contain_text("quantity must be")
            # Out of the field and straight back in (tab, shift-tab) with a search typed: the list closing on
            # the way out must not swallow it.
            await page.get_by_label("Quantity", exact=True).focus()
            await page.get_by_label("Symbol", exact=True).fill(first[:-2])
            await expect(page.get_by_role("option").filter(has_text=first)).to_be_visible()
            # The first coin found by the search as one types: the list offers it, a click picks it.
            await page.get_by_label("Symbol", exact=True).fill("")
            await page.get_by_label("Symbol", exact=True).press_sequentially(first[:-2])
            await page.get_by_role("option").filter(has_text=first).click()
            await expect(page.get_by_label("Symbol", exact=True)).to_have_value(first)
            await page.get_by_label("Quantity", exact=True).fill("1.5")
            await page.get_by_role("button", name="Add", exact=True).click()
            await expect(page.locator(f'tr[data-symbol="{first}"]')).to_be_visible()
            await expect(page.locator("#coin-error")).to_have_text("")
            await add_coin(page, second, "2")
            for symbol, quantity in quantities.items():
                await expect(page.locator(f'tr[data-symbol="{symbol}"] .quantity')).to_have_text(
                    str(quantity)
                )

        async with steps.step("the total follows the prices"):
            for symbol in quantities:
                await wait_until_subscribed(bff, symbol)
            now_s = int(time.time())
            shown = []
            opens = {first: Decimal(104), second: Decimal(10)}
            for k in range(1, 4):
                prices = {first: Decimal(100 + 7 * k), second: Decimal(k) / 4 + 10}
                second_ms = (now_s - 10 + k) * 1000
                for symbol, price in prices.items():
                    await publish(bff, symbol, opens[symbol], price, second_ms)
                opens = prices

                def pushed(prices=prices) -> dict | None:
                    for profile in reversed(frames):
                        got = profile.get("Coins", {}).get("Prices", {})
                        if {s: Decimal(p) for s, p in got.items()} == prices:
                            return profile
                    return None

                profile = await eventually(pushed, what=f"the profile with the prices of round {k}")
                check_profile(profile)
                assert Decimal(profile["Total"]) == sum(quantities[s] * prices[s] for s in prices)
                total = page.locator("#total")
                await expect(total).to_have_text(f"{Decimal(profile['Total']):,}")
                shown.append(shown_decimal(await total.inner_text()))
                for symbol in quantities:
                    row = page.locator(f'tr[data-symbol="{symbol}"]')
                    assert shown_decimal(await row.locator(".value").inner_text()) == Decimal(
                        profile["Coins"]["Totals"][symbol]
                    )
                    assert shown_decimal(await row.locator(".price").inner_text()) == prices[symbol]
                    await expect(row).to_have_attribute("data-stale", "false")
            assert len(set(shown)) == 3, shown
            for profile in frames:
                check_profile(profile)

        async with steps.step("open a candle chart"):
            await page.get_by_role("button", name=f"Show the candles of {first}").click()
            await expect(page.locator("#candles-status")).to_have_text(f"3 candles of {first} at 1s, live.")
            await expect(page.locator("#candle-chart canvas").first).to_be_visible()
            if os.environ.get("DASHBOARD_SCREENSHOT"):
                await page.screenshot(path=Path(os.environ["DASHBOARD_SCREENSHOT"]), full_page=True)

        async with steps.step("reload and stay signed in"):
            await page.reload()
            await expect(page.locator("#user-name")).to_have_text(name)
            await expect(page.locator("#total")).to_have_text(f"{shown[-1]:,}")
            await expect(page.locator("#connection")).to_have_text("Live")
            # A second tab shares the session: its refresh rotates the cookie both tabs send.
            other = await context.new_page()
            await other.goto(bff.url)
            await expect(other.locator("#user-name")).to_have_text(name)
            await page.reload()
            for tab in (other, page):
                await expect(tab.locator("#user-name")).to_have_text(name)
                await expect(tab.locator("#connection")).to_have_text("Live")
            await other.close()

        async with steps.step("sign out"):
            await page.get_by_role("button", name="Sign out").click()
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            await page.reload()
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            await expect(page.locator("#whoami")).to_be_hidden()

        # Refusals the page expects (the wrong quantity's 422, the refresh without a session after signing
        # out) are logged by the browser as failed loads; a policy violation would be logged too.
        assert not [text for text in refused if "Content Security Policy" in text], refused
        assert not uncaught, uncaught
        steps.discard()


async def test_when_the_bff_restarts_the_page_says_it_is_reconnecting_and_comes_back_live_signed_in(
    postgres, redis_url, tmp_path_factory
):
    port = free_port()
    profile_db = new_database(postgres, "profile")
    async with (
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
        FakeAggregator() as aggregator,
        chromium() as browser,
    ):

        def replica():
            return serve_bff(profile_db, redis_url, auth.port, aggregator, port=port, cookie_secure=False)

        page = await browser.new_page()
        steps = Steps(page, tmp_path_factory.mktemp("dashboard-restart-steps"))
        connection = page.locator("#connection")
        async with replica() as bff, steps.step("sign up"):
            await page.goto(bff.url)
            await page.get_by_label("Name").fill(new_name())
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Create account").click()
            await expect(connection).to_have_text("Live")
        async with steps.step("the BFF is gone"):
            await expect(connection).to_have_text(re.compile(r"^Reconnecting"))
            await expect(connection).to_have_attribute("data-state", "reconnecting")
        async with replica(), steps.step("the BFF is back"):
            # Backoff doubles from 0.5 s: the next attempt comes within a few seconds.
            await expect(connection).to_have_text("Live", timeout=20_000)
            await expect(page.locator("#total")).to_have_text("0")
        steps.discard()
