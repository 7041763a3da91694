"""Carol imports 200,000-row decks in the layouts other systems export, through the staff
page in the browser, with a real worker; the longest-prefix answers are then checked against
an independent computation of the generated deck (tests/telephony/deckgen.py)."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from panel.models import Supplier
from telephony import rating, services
from telephony.models import Carrier, DeckMapping, DeckState, RateDeck
from tests.factories import PASSWORD
from tests.telephony import deckgen

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROWS = 200_000
# What the page must have detected for each layout, without being told.
DETECTED = {
    "astpp": "astpp",
    "a2billing_export": "a2billing_export",
    "a2billing_dump": "a2billing_dump",
    "nanp": "nanp",
    "multi": "multi",
    "european": "german",
}
DURATIONS = [Decimal(s) for s in ("0.5", "7", "29", "31", "61", "125.2")]


def billed(rule, seconds: Decimal) -> int:
    return rating.billed_seconds(
        answered=True,
        connected=seconds,
        initial=rule.initial,
        increment=rule.increment,
        free=rule.free,
    )


def signed_in(browser, live_server, carol):
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(carol.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{live_server.url}/dashboard/")
    return context, page


@pytest.mark.parametrize("layout", deckgen.LAYOUTS)
def test_a_deck_as_its_system_exports_it_imports_through_the_browser(
    browser, live_server, celery_worker, carol, layout, artifacts
):
    carrier = Carrier.objects.create(
        name=f"Carrier {layout}", supplier=Supplier.objects.create(name=f"Supplier {layout}")
    )
    deck_file = deckgen.build(layout, ROWS)
    context, page = signed_in(browser, live_server, carol)
    page.goto(f"{live_server.url}/calls/staff/decks/")
    started = time.monotonic()
    page.get_by_label("Carrier").select_option(label=carrier.name)
    page.get_by_label("Rate deck (CSV)").set_input_files(
        {"name": deck_file.filename, "mimeType": "text/csv", "buffer": deck_file.content}
    )
    page.get_by_role("button", name="Upload and preview").click()
    page.get_by_role("heading", name=f"{deck_file.filename} for {carrier.name}").wait_for()
    draft = RateDeck.objects.get(carrier=carrier, state=DeckState.DRAFT)
    assert draft.read_as == DETECTED[layout]
    table = page.locator("table.deck-preview")
    assert table.locator("tbody tr").count() == 20
    assert table.locator("tr.error").count() == 0, table.inner_text()
    if layout == "nanp":
        # Three rates per code: the preview follows the column chosen, and the unused ones
        # are named. The deck is billed at the interstate rate, chosen back.
        first = deck_file.content.split(b"\n")[1].decode().split("|")
        page.get_by_label("Rate per minute").select_option(label=f"5: intrarate ({first[4]})")
        page.locator("table.deck-preview tbody tr").first.get_by_text(
            f"{Decimal(first[4]):.6f}/min"
        ).wait_for()
        page.get_by_text("Not used: interrate").wait_for()
        page.get_by_label("Rate per minute").select_option(label=f"4: interrate ({first[3]})")
        page.get_by_text("Not used: intrarate, ijrate").wait_for()
        page.get_by_label("Save this mapping for the carrier as").fill("NANP monthly")
    if layout == "astpp":
        page.get_by_text("Not used: Precedence, Strip, Prepend").wait_for()
    page.screenshot(path=str(artifacts / f"deck-preview-{layout}.png"), full_page=True)
    page.get_by_role("button", name="Import", exact=True).click()
    page.wait_for_url(f"{live_server.url}/calls/staff/decks/")
    page.locator("#decks td", has_text="Ready").first.wait_for()
    seconds = time.monotonic() - started
    deck = RateDeck.objects.get(pk=draft.pk)
    assert deck.state == DeckState.READY, deck.errors
    assert deck.rows_done == len(deck_file.rules)
    if layout == "nanp":
        assert DeckMapping.objects.filter(carrier=carrier, name="NANP monthly").exists()
    context.close()

    # The deck's answers against the generator's own statement of it, now and after the
    # later prices of the file have begun.
    for at in (timezone.now(), timezone.now() + timedelta(days=400)):
        for number in deckgen.sample_numbers(deck_file.rules, 400):
            want = deckgen.longest(deck_file.rules, number, at, deck.effective_from)
            got = services.rate_for(deck, "+" + number, at)
            if want is None:
                assert got is None, (number, got)
                continue
            assert got is not None, (number, want)
            assert (got.prefix, got.per_minute, got.connect_fee, got.free_seconds) == (
                want.prefix,
                want.per_minute,
                want.connect_fee,
                want.free,
            ), number
            # Blocks as written (initial 0 or 1 of a per-second rate) bill the same seconds.
            assert [
                rating.billed_seconds(
                    answered=True,
                    connected=s,
                    initial=got.initial_seconds,
                    increment=got.increment_seconds,
                    free=got.free_seconds,
                )
                for s in DURATIONS
            ] == [billed(want, s) for s in DURATIONS], number
    with (artifacts / "decks.txt").open("a") as record:  # for the note
        record.write(
            f"{layout}: {len(deck_file.content) / 1e6:.1f} MB, {ROWS} lines, "
            f"{len(deck_file.rules)} rules, read as {draft.read_as}, mapping {deck.mapping}, "
            f"{seconds:.1f} s from upload to ready\n"
        )
