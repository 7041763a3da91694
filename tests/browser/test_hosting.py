"""A member creates a site in the browser; a real worker sets it up over SSH on a real node."""

from __future__ import annotations

import time

import pytest

from provisioning import ssh
from provisioning.models import Site, SiteState
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_new_site_in_the_browser_answers_on_the_node(
    browser, live_server, celery_worker, alice, node, testhost, artifacts
):
    ssh.ensure_panel_key()
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(alice.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{live_server.url}/dashboard/")
    page.get_by_role("link", name="Hosting", exact=True).first.click()
    started = time.monotonic()
    page.get_by_label("Domain").fill("choir.example.org")
    page.get_by_role("button", name="Create site").click()
    page.get_by_text("choir.example.org is being set up.").wait_for()
    # The jobs table follows the worker live (htmx) until the job is done.
    page.locator("#jobs .badge", has_text="Done").wait_for()
    seconds = time.monotonic() - started
    page.reload()
    page.locator("h1 .badge", has_text="Active").wait_for()
    page.screenshot(path=str(artifacts / "site-created.png"), full_page=True)
    status, body = testhost.http("choir.example.org")
    assert status == 200
    assert "choir.example.org" in body
    assert Site.objects.get(domain="choir.example.org").state == SiteState.ACTIVE
    assert seconds < 20, f"from click to running site took {seconds:.1f}s"
    context.close()
