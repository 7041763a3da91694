"""The Content-Security-Policy in a real browser: the watch sees a violation, and pages whose
parts used to be inline (chart bars, the print link, allauth's hidden form, htmx polling) work
with none.

Every browser test fails on a violation (conftest.py); these visit the pages the other browser
tests do not.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from allauth.account.models import EmailAddress
from django.utils import timezone

from panel.models import BillingPeriod, PeriodState
from panel.services import ledger
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(browser, base: str, email: str):
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{base}/dashboard/")
    return context, page


def test_the_watch_sees_what_the_policy_blocks(browser, live_server, csp_violations):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live_server.url}/")
    assert csp_violations.take() == []
    # What an injection would bring: an inline style and an inline script.
    page.evaluate(
        """() => {
            document.body.insertAdjacentHTML("beforeend", '<p style="color: red">x</p>');
            const s = document.createElement("script");
            s.textContent = "window.ran = true";
            document.body.append(s);
        }"""
    )
    page.wait_for_timeout(300)
    seen = csp_violations.take()
    assert not page.evaluate("() => window.ran === true"), "an inline script ran"
    assert any(v.startswith("event: style-src") for v in seen), seen
    assert any(v.startswith("event: script-src") for v in seen), seen
    assert any(v.startswith("console:") for v in seen), seen
    context.close()


def test_pages_once_inline_work_under_the_policy(browser, live_server, alice, carol):
    base = live_server.url
    now = timezone.now()
    for day, cost in enumerate(["0.40", "0.10", "0.25"]):
        ledger.record_usage(
            member=alice,
            service="hosting",
            kind="disk",
            quantity=Decimal(1),
            unit="GB-month",
            unit_cost=Decimal(cost),
            cost_source="price list",
            occurred_at=now - timedelta(days=day),
            source_key=f"csp-{day}",
        )
    EmailAddress.objects.create(user=alice, email="alice.next@example.org", verified=False)
    # A closed month without lines still has a statement.
    january = ledger.period_for(date(2026, 1, 1))
    BillingPeriod.objects.filter(pk=january.pk).update(state=PeriodState.CLOSED, closed_at=now)

    context, page = sign_in(browser, base, alice.email)
    # Chart bars take their height from classes: the tallest day is full height.
    page.goto(f"{base}/billing/")
    heights = page.eval_on_selector_all(
        ".bars .bar", "bars => bars.map(b => b.getBoundingClientRect().height)"
    )
    assert max(heights) > 3 * sorted(h for h in heights if h > 1)[0], heights
    # The statement's print link is a button wired up by panel.js.
    page.goto(f"{base}/billing/statements/{january}/")
    page.evaluate("() => { window.print = () => { window.printed = true; }; }")
    page.get_by_role("button", name="Print or save as PDF").click()
    assert page.evaluate("() => window.printed === true")
    # allauth's email page with a change waiting: its helper form stays hidden.
    page.goto(f"{base}/accounts/email/")
    assert not page.locator("#pending-email").is_visible()
    page.get_by_role("button", name="Re-send Verification").wait_for()
    page.goto(f"{base}/commune/")
    page.get_by_text("Results by period").wait_for()
    # htmx added no <style> of its own.
    assert page.evaluate("() => document.querySelectorAll('style').length") == 0
    context.close()

    staff, page = sign_in(browser, base, carol.email)
    page.goto(f"{base}/staff/status/")
    # htmx polls the status every 5 s: its request goes out and its answer is swapped in.
    with page.expect_response(
        lambda r: r.url.endswith("/staff/status/") and r.request.header_value("HX-Request")
    ) as polled:
        pass
    assert polled.value.status == 200
    page.get_by_text("System status").wait_for()
    staff.close()
