"""identify() in SQL of its own gives what the ORM's select_related gives, with no more queries."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from panel.models import Membership
from telephony import services
from telephony.models import CallPlan, Phone
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def orm_identify(caller: str) -> Phone | None:
    return (
        Phone.objects.filter(number=caller)
        .select_related("member__membership", "member__call_plan")
        .order_by(F("verified_at").desc(nulls_last=True))
        .first()
    )


def snapshot(phone: Phone | None) -> object:
    if phone is None:
        return None
    member = phone.member
    membership = getattr(member, "membership", None)
    try:
        plan = member.call_plan
    except CallPlan.DoesNotExist:
        plan = None
    return (
        [(f.attname, getattr(phone, f.attname)) for f in Phone._meta.concrete_fields],
        [(f.attname, getattr(member, f.attname)) for f in type(member)._meta.concrete_fields],
        membership
        and [(f.attname, getattr(membership, f.attname)) for f in Membership._meta.concrete_fields],
        plan and [(f.attname, getattr(plan, f.attname)) for f in CallPlan._meta.concrete_fields],
    )


def test_identify_matches_select_related(alice, bob):
    services.phone_add(member=alice, number="+49 151 23456789")
    services.phone_add(member=bob, number="+49 151 23456789")  # unverified for bob
    Phone.objects.filter(member=alice).update(verified_at=timezone.now())
    services.pin_set(member=alice, pin="1234")
    lone = make_user(email="lone@example.org")  # no membership, no plan
    Phone.objects.create(member=lone, number="+4915199990000")
    for caller in ["+4915123456789", "+4915199990000", "+4915100000000", "not a number"]:
        expected = snapshot(orm_identify(caller) if services.E164.match(caller) else None)
        found = services.identify(caller)
        with CaptureQueriesContext(connection) as queries:
            got = snapshot(found)
        assert got == expected, caller
        assert len(queries) == 0, "member, membership and plan came with the phone"
    first = services.identify("+4915123456789")
    assert first is not None
    assert first.member == alice  # the verified one first
