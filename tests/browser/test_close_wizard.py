"""An admin closes a month in the browser; a real worker does the close; the page follows live."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from panel.models import BillingPeriod, PeriodState, Share
from panel.services import ledger
from tests.factories import PASSWORD
from tests.panel.ledger.conftest import at

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_close_wizard_runs_in_the_worker_and_shows_progress(
    browser, live_server, celery_worker, alice, bob, carol, artifacts
):
    Share.objects.filter(user__in=[alice, bob]).update(issued_at=at(2026, 1, 1))
    for n, member in enumerate([alice, bob]):
        ledger.record_usage(
            member=member,
            service="hosting",
            kind="disk",
            quantity=Decimal(10 + n),
            unit="GB-month",
            unit_cost=Decimal("0.04"),
            cost_source="price list",
            occurred_at=at(2026, 10, 4),
            source_key=f"d{n}",
        )
    october = ledger.period_for(date(2026, 10, 1))
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(carol.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{live_server.url}/dashboard/")
    page.goto(f"{live_server.url}/staff/billing/")
    page.get_by_role("link", name="Preview and close").first.click()
    page.get_by_text("Close 2026-10: preview").wait_for()
    assert page.get_by_text("alice@example.org").count() >= 1
    page.get_by_label("I checked the preview; post the charges and lock the period.").check()
    page.get_by_role("button", name="Close 2026-10").click()
    page.wait_for_url(f"{live_server.url}/staff/billing/periods/{october.pk}/progress/")
    # The page polls (htmx) until the worker has finished.
    page.get_by_text("Per head").wait_for()
    page.screenshot(path=str(artifacts / "period-closed.png"), full_page=True)
    period = BillingPeriod.objects.get(pk=october.pk)
    assert period.state == PeriodState.CLOSED
    assert period.result == Decimal("0.84")
    context.close()
