"""The whole way in, in a real browser: sign up, verify, apply, get approved, see the dashboard."""

from __future__ import annotations

import pytest

from panel.models import Membership, MembershipStatus
from tests.conftest import first_link, text_and_html
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_up_verify_apply_approve_dashboard(
    browser, live_server, smtp, statutes, carol, artifacts
):
    base = live_server.url
    member = browser.new_context(locale="en-GB")
    page = member.new_page()
    page.set_default_timeout(15_000)

    page.goto(f"{base}/accounts/signup/")
    page.get_by_label("Email").fill("frieda@example.org")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password (again)").fill(PASSWORD)
    page.get_by_role("button", name="Sign Up").click()
    page.wait_for_url(f"{base}/accounts/confirm-email/")

    text, html = text_and_html(smtp.wait_for("frieda@example.org", subject_has="Confirm"))
    link = first_link(text)
    assert link in html
    page.goto(link)
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(f"{base}/dashboard/")

    page.get_by_role("link", name="Apply for membership").first.click()
    page.get_by_label("Full name").fill("Frieda Example")
    page.get_by_label("Why do you want to join?").fill("I run a small choir's website.")
    page.get_by_label("I have read the statutes above and agree to them.").check()
    page.get_by_role("button", name="Send application").click()
    page.get_by_text("Your application is waiting for a decision.").wait_for()

    admin = browser.new_context(locale="en-GB")
    admin_page = admin.new_page()
    admin_page.set_default_timeout(15_000)
    admin_page.goto(f"{base}/accounts/login/")
    admin_page.get_by_label("Email").fill(carol.email)
    admin_page.get_by_label("Password").fill(PASSWORD)
    admin_page.get_by_role("button", name="Sign In").click()
    admin_page.wait_for_url(f"{base}/dashboard/")
    admin_page.get_by_role("link", name="Applications", exact=True).click()
    card = admin_page.locator("article", has_text="Frieda Example")
    card.get_by_label("Decision").select_option("approved")
    card.get_by_role("button", name="Decide").click()
    # htmx swaps the card for the outcome, without a page load.
    admin_page.get_by_text("Frieda Example is now a member holding share No.").wait_for()

    page.goto(f"{base}/dashboard/")
    page.locator("p.big", has_text="Share No.").wait_for()
    assert page.locator(".badge", has_text="Member").count() == 1
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    assert (
        Membership.objects.get(user__email="frieda@example.org").status == MembershipStatus.MEMBER
    )
    member.close()
    admin.close()
