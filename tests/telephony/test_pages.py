from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from telephony import services
from telephony.models import Phone, RateDeck


def test_member_adds_a_phone_sees_the_code_and_removes_it(client, alice, bob):
    client.force_login(alice)
    response = client.post(reverse("telephony:phone_add"), {"number": "+49 30 7654321"})
    assert response.status_code == 302
    phone = Phone.objects.get(member=alice)
    page = client.get(reverse("telephony:index")).content.decode()
    assert phone.verification_code in page
    client.force_login(bob)
    assert client.post(reverse("telephony:phone_remove", args=[phone.pk])).status_code == 404
    client.force_login(alice)
    client.post(reverse("telephony:phone_remove", args=[phone.pk]))
    assert not Phone.objects.exists()


def test_a_number_verified_by_another_member_is_refused(client, alice, bob):
    phone = services.phone_add(member=bob, number="+49 30 7654321")
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now())
    client.force_login(alice)
    response = client.post(reverse("telephony:phone_add"), {"number": "+49 30 7654321"})
    assert response.status_code == 422
    assert "verified by another member" in response.content.decode()


def test_members_cannot_open_premium_numbers_themselves(client, alice):
    client.force_login(alice)
    client.post(
        reverse("telephony:plan"), {"per_call_cap": "2.00", "allowed_classes": ["fixed", "premium"]}
    )
    assert "premium" not in services.plan_for(alice).allowed_classes


def test_price_lookup_and_history_show_the_rate_used(client, alice, carrier, access, caller):
    services.call_authorize(
        uniqueid="h1", member=alice, caller=caller.number, access_number=access, digits="030123456"
    )
    services.call_settle(
        uniqueid="h1", dial_status="ANSWER", answered_at=Decimal(10), ended_at=Decimal(70)
    )
    client.force_login(alice)
    page = client.get(reverse("telephony:index"), {"number": "+1 212 555 0100"}).content.decode()
    assert "0.012000" in page  # USA 0.012/min
    assert "Carrier One v1 +4930: 0.008000/min, 1/1s" in page


def test_members_see_rates_and_costs_with_the_decimals_they_are_billed_at(
    client, alice, carol, carrier, access, caller
):
    """Billing keeps six decimals; pages rounding to four showed prices that were not billed
    (0.012345/min shown as 0.0123)."""
    deck = services.deck_upload(
        carrier=carrier,
        actor=carol,
        filename="v2.csv",
        content=b"prefix,destination,rate,increment,connect_fee\n"
        b"4930,Berlin,0.012345,1/1,0.000051\n1,USA,0.012000,6/6,0\n",
        mapping=services.PRESETS["standard"],
        effective_from=timezone.now() - timedelta(hours=1),
    )
    services.deck_import(deck_id=deck.pk)
    services.call_authorize(
        uniqueid="d6", member=alice, caller=caller.number, access_number=access, digits="030123456"
    )
    record = services.call_settle(
        uniqueid="d6", dial_status="ANSWER", answered_at=Decimal(10), ended_at=Decimal(17)
    )
    assert record.cost == Decimal("0.001491")  # 7 s at 0.012345/min + 0.000051
    client.force_login(alice)
    page = client.get(reverse("telephony:index"), {"number": "+49 30 1234567"}).content.decode()
    assert "0.012345" in page  # the quote
    assert "0.000051" in page  # its connect fee
    assert "+4930: 0.012345/min, 1/1s" in page  # the call's record
    assert "0.001491" in page  # its cost, as billed


def test_staff_upload_a_deck_preview_it_and_follow_the_import(
    client, carol, carrier, django_capture_on_commit_callbacks
):
    client.force_login(carol)
    upload = SimpleUploadedFile("v2.csv", b"prefix,name,price\n49,Germany,0.02\n")
    response = client.post(
        reverse("telephony:staff_decks"),
        {
            "carrier": carrier.pk,
            "file": upload,
            "read_as": "preset:simple",
            "effective_from": (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        },
    )
    draft = RateDeck.objects.get(source_name="v2.csv")
    assert response.status_code == 302
    assert response["Location"] == reverse("telephony:staff_deck_mapping", args=[draft.pk])
    page = client.get(response["Location"]).content.decode()
    assert "+49 Germany: 0.020000/min" in page  # the first row, as the import will read it
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("telephony:staff_deck_mapping", args=[draft.pk]),
            {
                "action": "import",
                "delimiter": ",",
                "encoding": "utf-8",
                "header": "on",
                "date_format": "%Y-%m-%d",
                "max_prefixes": "100",
                "column_prefix": "0",
                "column_description": "1",
                "column_per_minute": "2",
            },
        )
    assert response.status_code == 302
    deck = RateDeck.objects.get(pk=draft.pk)
    assert (deck.state, deck.version) == ("ready", 2)
    assert "v2.csv" in client.get(reverse("telephony:staff_decks")).content.decode()


def test_the_deck_page_says_the_upload_limit_and_the_panel_keeps_it(
    client, carol, carrier, settings
):
    """The limit is PANEL_UPLOAD_MAX_MB, the same the panel role gives nginx (tests/ansible)."""
    settings.PANEL_UPLOAD_MAX_MB = 1
    client.force_login(carol)
    assert "At most 1 MB." in client.get(reverse("telephony:staff_decks")).content.decode()
    big = b"prefix,name,price\n" + b"49,Germany,0.02\n" * 70_000  # 1.1 MB
    response = client.post(
        reverse("telephony:staff_decks"),
        {
            "carrier": carrier.pk,
            "file": SimpleUploadedFile("big.csv", big),
            "read_as": "preset:simple",
            "effective_from": (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        },
    )
    assert response.status_code == 422
    assert "the file is larger than 1 MB" in response.content.decode()
    assert not RateDeck.objects.filter(source_name="big.csv").exists()
