"""The money pages, for members and for admins, over HTTP."""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from panel.models import BillingPeriod, Payment, PeriodState, Share
from panel.services import closing, ledger
from tests.panel.ledger.conftest import at, pay


@pytest.fixture
def closed_october(alice, bob, carol, supplier):
    Share.objects.filter(user__in=[alice, bob]).update(issued_at=at(2026, 1, 1))
    pay(alice, "10.00", "a-pay", day=date(2026, 10, 1))
    rate = ledger.cost_rate_set(
        actor=carol,
        service="hosting",
        kind="disk",
        unit="GB-month",
        unit_cost=Decimal("0.04"),
        supplier=supplier,
        reference="INV-4711",
        valid_from=date(2026, 1, 1),
    )
    ledger.record_usage(
        member=alice,
        service="hosting",
        kind="disk",
        quantity=Decimal("12.5"),
        unit="GB-month",
        unit_cost=rate.unit_cost,
        cost_source=rate,
        occurred_at=at(2026, 10, 3),
        source_key="disk-a",
    )
    ledger.record_usage(
        member=bob,
        service="hosting",
        kind="disk",
        quantity=Decimal("3"),
        unit="GB-month",
        unit_cost=rate.unit_cost,
        cost_source=rate,
        occurred_at=at(2026, 10, 3),
        source_key="disk-b",
    )
    october = ledger.period_for(date(2026, 10, 1))
    closing.period_close_start(period=october, actor=carol)
    return closing.period_close_run(period_id=october.pk)


def test_billing_page_shows_balance_reference_and_rated_usage(client, alice, closed_october):
    ledger.record_usage(
        member=alice,
        service="calls",
        kind="call",
        quantity=Decimal("3"),
        unit="minute",
        unit_cost=Decimal("0.0123"),
        cost_source="Carrier deck v3, row 49",
        occurred_at=at(2026, 11, 20),
        source_key="call-1",
    )
    client.force_login(alice)
    page = client.get(reverse("billing")).content.decode()
    assert ledger.payment_reference_for(alice.pk) in page
    assert "Carrier deck v3, row 49" in page  # the rate's source next to the charge
    assert "0.012300 / minute" in page
    assert 'class="bars"' in page
    assert reverse("statement", args=["2026-10"]) in page


def test_statement_and_csv_show_only_the_members_own_lines(client, alice, bob, closed_october):
    client.force_login(alice)
    page = client.get(reverse("statement", args=["2026-10"])).content.decode()
    assert "INV-4711" in page
    assert "0.50" in page  # 12.5 x 0.04
    exported = client.get(reverse("statement_csv", args=["2026-10"]))
    rows = list(csv.DictReader(io.StringIO(exported.content.decode())))
    assert [(r["service"], r["quantity"], r["amount"]) for r in rows] == [
        ("hosting", "12.500000", "0.500000")
    ]
    client.force_login(bob)
    bobs = list(
        csv.DictReader(
            io.StringIO(client.get(reverse("statement_csv", args=["2026-10"])).content.decode())
        )
    )
    assert [r["quantity"] for r in bobs] == ["3.000000"]
    assert client.get(reverse("statement", args=["1999-01"])).status_code == 404
    assert client.get(reverse("statement", args=["nonsense"])).status_code == 404


def test_commune_page_shows_each_closed_period(client, bob, closed_october):
    client.force_login(bob)
    page = client.get(reverse("commune")).content.decode()
    assert "2026-10" in page
    assert "0.62" in page  # cost recovery 0.50 + 0.12, no supplier cost: all surplus
    assert "0.31" in page  # per head


def test_close_wizard_preview_confirm_progress(
    client, alice, carol, supplier, django_capture_on_commit_callbacks
):
    Share.objects.filter(user=alice).update(issued_at=at(2026, 1, 1))
    ledger.record_usage(
        member=alice,
        service="hosting",
        kind="disk",
        quantity=Decimal("1"),
        unit="GB-month",
        unit_cost=Decimal("2.345"),
        cost_source="x",
        occurred_at=at(2026, 10, 9),
        source_key="w1",
    )
    october = ledger.period_for(date(2026, 10, 1))
    client.force_login(carol)
    preview = client.get(reverse("staff_close", args=[october.pk])).content.decode()
    assert "2.345000" in preview
    assert "alice@example.org" in preview
    refused = client.post(reverse("staff_close", args=[october.pk]), {})
    assert refused.status_code == 200
    assert 'aria-invalid="true"' in refused.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(reverse("staff_close", args=[october.pk]), {"confirm": "on"})
    assert done.status_code == 302
    assert BillingPeriod.objects.get(pk=october.pk).state == PeriodState.CLOSED
    progress = client.get(done["Location"]).content.decode()
    assert "Closed" in progress
    trial = client.get(reverse("staff_trial_balance")).content.decode()
    assert "balanced" in trial
    assert "NOT BALANCED" not in trial


def test_manual_payment_booked_once_even_if_submitted_twice(client, alice, carol):
    ledger.balance_for(alice)
    client.force_login(carol)
    page = client.get(reverse("staff_payments")).content.decode()
    nonce = re.search(r'name="nonce" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    data = {
        "member": alice.pk,
        "amount": "12.34",
        "received_on": "2026-11-20",
        "reference": "cash",
        "nonce": nonce,
    }
    assert client.post(reverse("staff_payments"), data).status_code == 302
    assert client.post(reverse("staff_payments"), data).status_code == 302
    assert Payment.objects.filter(member=alice).count() == 1


def test_bank_upload_page_lists_line_errors(client, carol, django_capture_on_commit_callbacks):
    client.force_login(carol)
    upload = SimpleUploadedFile(
        "s.csv", b"date,amount,reference\n2026-11-01,abc,CP000001\n", content_type="text/csv"
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("staff_bank_upload"), {"statement": upload})
    page = client.get(response["Location"]).content.decode()
    assert "line 2: amount &#x27;abc&#x27; is not a number" in page
    assert "Nothing was imported" in page
