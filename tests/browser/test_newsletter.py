"""Alice writes a campaign in the browser, sends it, and watches the progress bar fill while a
real worker sends 2,000 messages to a real SMTP server."""

from __future__ import annotations

import pytest

from newsletters.models import Campaign, CampaignState, SenderLimit
from tests.factories import PASSWORD
from tests.newsletters.fixtures import add_confirmed

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_campaign_is_written_sent_and_followed_live(
    browser, live_server, worker_factory, alice, alice_list, mail_rate, sink, artifacts, settings
):
    add_confirmed(alice_list, 2000)
    # Slow enough to watch: 600 a minute would take minutes, so the limit is the default's
    # order of magnitude per second.
    SenderLimit.objects.create(member=alice, per_minute=60_000)
    worker_factory(
        NEWSLETTER_SMTP_URL=settings.NEWSLETTER_SMTP_URL,
        NEWSLETTER_BATCH_SIZE="50",
        NEWSLETTER_MAINTENANCE_SECONDS="2",
    )
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(alice.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{live_server.url}/dashboard/")

    page.goto(f"{live_server.url}/newsletters/lists/{alice_list.pk}/")
    page.get_by_role("link", name="New campaign").click()
    page.get_by_label("Subject").fill("Autumn seeds")
    page.get_by_label("Plain text").fill("Hello {{ nmae }},\nthe seed swap is on Sunday.")
    page.get_by_role("button", name="Save draft").click()
    # The typo is caught, with its line.
    page.get_by_text("line 1: unknown merge field {{ nmae }}").wait_for()
    page.get_by_label("Plain text").fill("Hello {{ name }},\nthe seed swap is on Sunday.")
    # The HTML styles itself: in the preview frame its styles apply (its own policy), and the
    # panel's page around it reports no violation (the watch fails the test otherwise).
    page.get_by_label("HTML (optional)").fill(
        "<style>p.seed { color: rgb(0, 128, 0); }</style>"
        '<p class="seed" style="font-weight: 700">Seeds for {{ name }}</p>'
    )
    page.get_by_role("button", name="Save draft").click()
    page.get_by_text("Hello Reader,").wait_for()  # the preview
    frame = page.frame_locator("iframe.preview-frame")
    seed = frame.get_by_text("Seeds for Reader")
    seed.wait_for()
    assert seed.evaluate("e => getComputedStyle(e).color") == "rgb(0, 128, 0)"
    assert seed.evaluate("e => getComputedStyle(e).fontWeight") == "700"
    campaign = Campaign.objects.get(subject="Autumn seeds")

    page.get_by_role("button", name="Send now").click()
    progress = page.get_by_test_id("progress-text")
    # htmx polls the progress card while the worker sends: a value between 0 and 100 shows.
    page.wait_for_function(
        "() => { const p = document.querySelector('#send-progress');"
        " return p && p.value > 0 && p.value < 100; }"
    )
    page.screenshot(path=str(artifacts / "newsletter-sending.png"), full_page=True)
    page.get_by_text("100% · 2000 / 2000").wait_for(timeout=120_000)
    assert "2000 / 2000" in progress.inner_text()
    page.screenshot(path=str(artifacts / "newsletter-sent.png"), full_page=True)
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.SENT
    assert len(sink.envelopes) == 2000
    context.close()
