"""The staff deck pages: upload, preview with the mapping, import, saved mappings, discard."""

from __future__ import annotations

from datetime import timedelta

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from panel.models import AuditEntry
from telephony import services
from telephony.models import DeckMapping, DeckState, Rate, RateDeck

ASTPP = (
    b"Code,Destination,Connect Cost,Included Seconds,Per Minute Cost,Increment,Precedence,"
    b"Strip,Prepend\n"
    b"4930,Berlin,0.05,30,0.01,1,0,,\n"
    b"49,Germany,0,0,0.02,60,0,,\n"
)
GERMAN_CP1252 = (
    "Präfix;Zielnetz;Preis/Min;Taktung;Verbindungsentgelt\r\n"
    "4989;München;0,0123;60/60;0,00\r\n"
    "43;Österreich;0,02;1/1;0,01\r\n"
).encode("cp1252")


def upload(client, carrier, content: bytes, read_as: str = "", name: str = "deck.csv"):
    return client.post(
        reverse("telephony:staff_decks"),
        {
            "carrier": carrier.pk,
            "file": SimpleUploadedFile(name, content),
            "read_as": read_as,
            "effective_from": (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        },
    )


def form_of(mapping: dict, **changes) -> dict:
    """The mapping form's fields as a browser sends them."""
    data = {
        "delimiter": mapping["delimiter"],
        "encoding": mapping["encoding"],
        "date_format": mapping["date_format"],
        "prepend": mapping["prepend"],
        "max_prefixes": str(mapping["max_prefixes"]),
        **{f"column_{k}": str(v) for k, v in mapping["columns"].items()},
    }
    if mapping["header"]:
        data["header"] = "on"
    if mapping["zero_is_per_second"]:
        data["zero_is_per_second"] = "on"
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_an_astpp_deck_is_detected_previewed_imported_and_its_mapping_saved(
    client, carol, carrier, django_capture_on_commit_callbacks
):
    client.force_login(carol)
    response = upload(client, carrier, ASTPP)
    draft = RateDeck.objects.get(state=DeckState.DRAFT)
    assert response["Location"] == reverse("telephony:staff_deck_mapping", args=[draft.pk])
    assert (draft.version, draft.read_as) == (None, "astpp")
    page = client.get(response["Location"]).content.decode()
    assert "Read as UTF-8, separated by comma; lines end with LF." in page
    # ASTPP's increment is per second at 1; its included seconds are free seconds.
    assert "+4930 Berlin: 0.010000/min, 0.050000 connect, 1/1 s, first 30 s free" in page
    assert "Not used: Precedence, Strip, Prepend" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            response["Location"],
            form_of(draft.mapping, action="import", save_as="ASTPP monthly"),
        )
    assert response.status_code == 302
    deck = RateDeck.objects.get(pk=draft.pk)
    assert (deck.state, deck.version, deck.read_as) == (DeckState.READY, 2, "ASTPP monthly")
    berlin = Rate.objects.get(deck=deck, prefix="4930")
    assert (berlin.initial_seconds, berlin.increment_seconds, berlin.free_seconds) == (1, 1, 30)
    saved = DeckMapping.objects.get(carrier=carrier, name="ASTPP monthly")
    assert saved.mapping["columns"]["free"] == 3
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"rate_deck.uploaded", "rate_deck.import_started", "deck_mapping.saved"} <= actions

    # Next month's file, with a byte order mark and CRLF now, is read with the saved mapping.
    response = upload(client, carrier, b"\xef\xbb\xbf" + ASTPP.replace(b"\n", b"\r\n"))
    again = RateDeck.objects.get(state=DeckState.DRAFT)
    assert again.read_as == "ASTPP monthly"
    assert again.mapping["encoding"] == "utf-8-sig"
    page = client.get(response["Location"]).content.decode()
    assert "lines end with CRLF" in page
    assert "first 30 s free" in page


def test_a_windows_1252_file_is_said_and_read_right(client, carol, carrier):
    client.force_login(carol)
    response = upload(client, carrier, GERMAN_CP1252)
    page = client.get(response["Location"]).content.decode()
    assert "Read as Windows-1252, separated by semicolon" in page
    assert "The file is not UTF-8" in page
    assert "+4989 München: 0.012300/min, 60/60 s" in page
    assert "+43 Österreich: 0.020000/min, 0.010000 connect, 1/1 s" in page


def test_the_preview_follows_the_form_and_refuses_a_mapping_without_a_prefix(
    client, carol, carrier
):
    client.force_login(carol)
    response = upload(client, carrier, ASTPP)
    draft = RateDeck.objects.get(state=DeckState.DRAFT)
    url = response["Location"]
    # htmx asks for the preview again on every change; the rate read from another column.
    partial = client.get(
        url, form_of(draft.mapping, column_per_minute="2"), headers={"HX-Request": "true"}
    ).content.decode()
    assert partial.startswith('\n<section id="deck-preview"') or 'id="deck-preview"' in partial
    assert "<html" not in partial
    assert "+4930 Berlin: 0.050000/min" in partial
    # Read as semicolon-separated, the file is one column: the mapped columns are gone.
    refused = client.get(url, form_of(draft.mapping, delimiter=";"))
    assert refused.status_code == 422
    response = client.post(url, form_of(draft.mapping, action="import", column_prefix=""))
    assert response.status_code == 422
    assert 'id="id_column_prefix_errors"' in response.content.decode()
    assert RateDeck.objects.get(pk=draft.pk).state == DeckState.DRAFT
    assert not Rate.objects.filter(deck=draft).exists()


def test_a_draft_can_be_discarded_and_old_ones_go_by_themselves(client, carol, carrier):
    client.force_login(carol)
    upload(client, carrier, ASTPP, name="wrong.csv")
    draft = RateDeck.objects.get(state=DeckState.DRAFT)
    response = client.post(
        reverse("telephony:staff_deck_mapping", args=[draft.pk]), {"action": "discard"}
    )
    assert response.status_code == 302
    assert not RateDeck.objects.filter(pk=draft.pk).exists()
    assert AuditEntry.objects.filter(action="rate_deck.discarded").count() == 1
    upload(client, carrier, ASTPP, name="forgotten.csv")
    forgotten = RateDeck.objects.get(state=DeckState.DRAFT)
    services.fail_stale_deck_imports(now=timezone.now() + timedelta(hours=23))
    assert RateDeck.objects.filter(pk=forgotten.pk).exists()
    services.fail_stale_deck_imports(now=timezone.now() + timedelta(hours=25))
    assert not RateDeck.objects.filter(pk=forgotten.pk).exists()
    assert AuditEntry.objects.filter(action="rate_deck.discarded").count() == 2


def test_a_deck_imported_already_is_not_imported_twice(client, carol, carrier):
    client.force_login(carol)
    response = upload(client, carrier, ASTPP)
    draft = RateDeck.objects.get(state=DeckState.DRAFT)
    first = client.post(response["Location"], form_of(draft.mapping, action="import"))
    assert first.status_code == 302
    # The same form sent again (a double click, a back button): the page is the list now.
    second = client.post(response["Location"], form_of(draft.mapping, action="import"))
    assert second.status_code == 302
    assert RateDeck.objects.filter(carrier=carrier, version__isnull=False).count() == 2


def test_a_saved_mapping_of_another_carrier_is_refused(client, carol, carrier):
    other = type(carrier).objects.create(name="Other", supplier=carrier.supplier)
    saved = DeckMapping.objects.create(carrier=other, name="theirs", mapping={"columns": {}})
    client.force_login(carol)
    response = upload(client, carrier, ASTPP, read_as=f"saved:{saved.pk}")
    assert response.status_code == 422
    assert 'id="id_read_as_errors"' in response.content.decode()
    assert not RateDeck.objects.filter(state=DeckState.DRAFT).exists()
