"""The dashboard's alerts panel in a real browser (Debian's chromium driven by Playwright), against the real
BFF with its alert evaluator on a Kafka topic of SecondStats: a user creates a rule in the page, sees it fire
as a notification and in the list, acknowledges it, pauses and removes the rule.

Runs only where the BFF serves the alert routes (``profile_bff.alerts``); the rest of the dashboard is tested
in tests/integration/test_dashboard.py. A screenshot of each step is kept when the test fails.
"""

from __future__ import annotations

import time
import uuid

import pytest
from playwright.async_api import expect
from support.bff import PASSWORD, new_name, new_symbol, second_stat
from support.browser import Steps, chromium
from support.kafka_helpers import produce_records
from support.polling import eventually
from support.stacks import serve_alerting_stack

pytest.importorskip("profile_bff.alerts", reason="this BFF has no alert routes")

TOPIC = f"dashboard-alerts-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, tmp_path_factory, kafka_bootstrap):
    async with serve_alerting_stack(
        postgres, redis_url, tmp_path_factory, kafka_bootstrap, TOPIC, cookie_secure=False
    ) as running:
        yield running


async def test_a_user_creates_an_alert_sees_it_fire_acknowledges_it_and_removes_the_rule(
    bff, kafka_bootstrap, tmp_path_factory
):
    symbol = new_symbol()
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 1100})
        steps = Steps(page, tmp_path_factory.mktemp("dashboard-alert-steps"))
        uncaught: list[str] = []
        page.on("pageerror", lambda error: uncaught.append(str(error)))

        async with steps.step("sign up"):
            await page.goto(bff.url)
            await page.get_by_label("Name").fill(new_name())
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Create account").click()
            await expect(page.locator("#connection")).to_have_text("Live")
            await expect(page.get_by_role("heading", name="Alerts")).to_be_visible()

        async with steps.step("create an alert"):
            await page.get_by_label("When").select_option("price_above")
            await page.get_by_label("Coin", exact=True).fill(symbol)
            await page.get_by_label("Price", exact=True).fill("100")
            await page.get_by_role("button", name="Create alert").click()
            rule = page.locator("#rule-rows tr")
            await expect(rule).to_have_count(1)
            await expect(rule.first).to_contain_text(f"{symbol} rises above 100")
            rule_id = int(await rule.first.get_attribute("data-rule"))

        async with steps.step("see it fire"):
            evaluator = bff.running.service.evaluator
            await eventually(
                lambda: evaluator.consuming and rule_id in evaluator.loaded_rule_ids,
                what="the rule loaded by the evaluator",
            )
            start = (int(time.time()) + 2) * 1000
            closes = ["99", "101"]
            await produce_records(
                kafka_bootstrap,
                TOPIC,
                [(symbol.encode(), second_stat(symbol, c, start + 1000 * i)) for i, c in enumerate(closes)],
            )
            toast = page.locator("#notifications .toast")
            await expect(toast).to_contain_text(f"Alert: {symbol} rises above 100 (at 101).")
            await expect(page.locator("#firing-rows tr")).to_have_count(1)
            await expect(page.locator("#unacked-count")).to_have_text("1 new")

        async with steps.step("acknowledge it"):
            await toast.get_by_role("button", name="Acknowledge").click()
            await expect(toast).to_have_count(0)
            await expect(page.locator("#firing-rows tr").first).to_contain_text("acknowledged")
            await expect(page.locator("#unacked-count")).to_be_hidden()
            # Acknowledged for good: after a reload it is not notified again.
            await page.reload()
            await expect(page.locator("#firing-rows tr").first).to_contain_text("acknowledged")
            await expect(toast).to_have_count(0)

        async with steps.step("pause and remove the rule"):
            await page.get_by_role("button", name=f"Pause the alert {symbol} rises above 100").click()
            await expect(rule.first).to_contain_text("paused")
            await page.get_by_role("button", name=f"Remove the alert {symbol} rises above 100").click()
            await expect(rule).to_have_count(0)

        assert not uncaught, uncaught
        steps.discard()
