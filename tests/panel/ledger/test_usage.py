from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from panel.models import MemberBalance, UsageEvent
from panel.services import ledger
from panel.services.ledger import LedgerError, UsageBatchError, UsageConflict, UsageInput
from tests.panel.ledger.conftest import at


def usage(member, key="u1", quantity="2.5", unit_cost="0.123457", when=None, service="hosting"):
    return ledger.record_usage(
        member=member,
        service=service,
        kind="disk",
        quantity=Decimal(quantity) if isinstance(quantity, str) else quantity,
        unit="GB-month",
        unit_cost=Decimal(unit_cost),
        cost_source="Hetzner price list 2026",
        occurred_at=when or at(2026, 10, 5),
        source_key=key,
    )


def test_usage_is_rated_exactly_at_six_places(alice):
    event = usage(alice)
    # 2.5 x 0.123457 = 0.3086425: half-even rounding, so that rounding has no drift.
    assert event.amount == Decimal("0.308642")
    assert MemberBalance.objects.get(member=alice).unbilled == Decimal("0.308642")
    assert event.period.starts_on.isoformat() == "2026-10-01"


def test_same_key_same_payload_is_a_no_op(alice):
    first = usage(alice)
    again = usage(alice)
    assert first.pk == again.pk
    assert UsageEvent.objects.count() == 1
    assert MemberBalance.objects.get(member=alice).unbilled == first.amount


def test_same_key_other_payload_is_an_error(alice):
    usage(alice)
    with pytest.raises(UsageConflict, match="another payload"):
        usage(alice, quantity="3")


def test_bad_usage_says_what_is_wrong(alice):
    with pytest.raises(LedgerError, match="must be a Decimal, not float"):
        usage(alice, quantity=2.5)
    with pytest.raises(LedgerError, match="unknown service"):
        usage(alice, service="mining")
    with pytest.raises(LedgerError, match="source key"):
        usage(alice, key="has spaces")
    naive = datetime(2026, 10, 1)
    with pytest.raises(LedgerError, match="no time zone"):
        usage(alice, when=naive)


def batch_of(members, n, prefix="b", cost="0.0021"):
    return [
        UsageInput(
            member_id=members[i % len(members)].pk,
            service="calls",
            kind="call",
            quantity=Decimal("1.5"),
            unit="minute",
            unit_cost=Decimal(cost),
            cost_source="Carrier deck v3",
            occurred_at=at(2026, 10, 1 + i % 28),
            source_key=f"{prefix}{i}",
        )
        for i in range(n)
    ]


def test_batch_inserts_and_replay_changes_nothing(alice, bob):
    events = batch_of([alice, bob], 500)
    result = ledger.record_usage_batch(events=events)
    assert (result.inserted, result.duplicates) == (500, 0)
    unbilled = dict(MemberBalance.objects.values_list("member_id", "unbilled"))
    assert unbilled[alice.pk] == Decimal("0.00315") * 250
    replay = ledger.record_usage_batch(events=events)
    assert (replay.inserted, replay.duplicates) == (0, 500)
    assert dict(MemberBalance.objects.values_list("member_id", "unbilled")) == unbilled
    assert UsageEvent.objects.count() == 500


def test_batch_with_a_changed_payload_is_refused_whole(alice, bob):
    ledger.record_usage_batch(events=batch_of([alice, bob], 10))
    changed = batch_of([alice, bob], 12, cost="0.0022")
    with pytest.raises(UsageBatchError, match="another payload"):
        ledger.record_usage_batch(events=changed)
    assert UsageEvent.objects.count() == 10


def test_batch_with_invalid_events_names_them_and_saves_nothing(alice):
    events = batch_of([alice], 3)
    events[1] = UsageInput(**{**events[1].__dict__, "unit_cost": Decimal("-1")})
    with pytest.raises(UsageBatchError, match=r"event 2 \('b1'\): unit cost must be zero or more"):
        ledger.record_usage_batch(events=events)
    assert UsageEvent.objects.count() == 0


def test_cost_rates_supersede_and_refuse_overlap(carol, supplier):
    from datetime import date

    first = ledger.cost_rate_set(
        actor=carol,
        service="hosting",
        kind="disk",
        unit="GB-month",
        unit_cost=Decimal("0.04"),
        supplier=supplier,
        reference="price list 2026-01",
        valid_from=date(2026, 1, 1),
    )
    second = ledger.cost_rate_set(
        actor=carol,
        service="hosting",
        kind="disk",
        unit="GB-month",
        unit_cost=Decimal("0.05"),
        supplier=supplier,
        reference="price list 2026-07",
        valid_from=date(2026, 7, 1),
    )
    first.refresh_from_db()
    assert first.valid_to == date(2026, 7, 1)
    assert ledger.cost_rate_at(service="hosting", kind="disk", day=date(2026, 6, 30)) == first
    assert ledger.cost_rate_at(service="hosting", kind="disk", day=date(2026, 7, 1)) == second
    with pytest.raises(LedgerError, match="already covers"):
        ledger.cost_rate_set(
            actor=carol,
            service="hosting",
            kind="disk",
            unit="GB-month",
            unit_cost=Decimal("0.06"),
            supplier=supplier,
            reference="x",
            valid_from=date(2026, 3, 1),
            valid_to=date(2026, 4, 1),
        )


def test_usage_can_name_its_cost_rate(alice, carol, supplier):
    from datetime import date

    rate = ledger.cost_rate_set(
        actor=carol,
        service="hosting",
        kind="disk",
        unit="GB-month",
        unit_cost=Decimal("0.04"),
        supplier=supplier,
        reference="INV-2026-117",
        valid_from=date(2026, 1, 1),
    )
    event = ledger.record_usage(
        member=alice,
        service="hosting",
        kind="disk",
        quantity=Decimal("10"),
        unit="GB-month",
        unit_cost=rate.unit_cost,
        cost_source=rate,
        occurred_at=at(2026, 10, 3),
        source_key="disk-1",
    )
    assert event.cost_rate == rate
    assert "INV-2026-117" in event.cost_source


def test_admin_enters_cost_rates_through_the_service_and_sees_overlaps(client, carol, supplier):
    from datetime import date

    from django.urls import reverse

    from panel.models import AuditEntry, CostRate

    client.force_login(carol)
    data = {
        "service": "hosting",
        "kind": "disk",
        "unit": "GB-month",
        "unit_cost": "0.04",
        "supplier": supplier.pk,
        "reference": "INV-1",
        "valid_from": "2026-01-01",
        "valid_to": "2026-06-01",
    }
    assert client.post(reverse("admin:panel_costrate_add"), data).status_code == 302
    overlapping = client.post(
        reverse("admin:panel_costrate_add"), {**data, "valid_from": "2026-03-01", "valid_to": ""}
    )
    assert overlapping.status_code == 200
    assert (
        "Another rate of this service and kind covers part of this time."
        in overlapping.content.decode()
    )
    assert CostRate.objects.count() == 1
    assert CostRate.objects.get().valid_to == date(2026, 6, 1)
    assert AuditEntry.objects.filter(action="cost_rate.set", actor=carol).count() == 1
