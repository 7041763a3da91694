"""The demo's dial-in: an access number, a carrier with a small deck, alice's verified phone
(PIN 2468) and a few past calls. Run by bin/demo after demo_seed; safe to run again.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone as tz

from panel.models import Supplier, User
from telephony import services as calls
from telephony.models import AccessNumber, CallRecord, Carrier, Phone, RateDeck, Trunk


class Command(BaseCommand):
    help = "Give the demo an access number, a rate deck and alice's phone and calls (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        alice = User.objects.filter(email="alice@demo.coop").first()
        carol = User.objects.filter(email="carol@demo.coop").first()
        if alice is None or carol is None:
            raise CommandError("run demo_seed first (alice@demo.coop is missing)")
        seed_calls(alice, carol)


DEMO_DECK = b"""prefix,destination,rate,increment,connect_fee
1,USA and Canada,0.006000,6/6,0
44,United Kingdom,0.009000,60/1,0
4420,London,0.008000,1/1,0
447,United Kingdom mobile,0.030000,30/6,0
49,Germany,0.007000,60/60,0
4915,Germany mobile,0.025000,30/6,0
4916,Germany mobile,0.025000,30/6,0
4917,Germany mobile,0.025000,30/6,0
4930,Berlin,0.005000,1/1,0
33,France,0.009000,60/60,0
34,Spain,0.009000,60/60,0
"""


def seed_calls(member: User, admin: User) -> None:
    """An access number, a carrier with a small deck, alice's verified phone, a few calls."""
    access, _ = AccessNumber.objects.get_or_create(
        number="+4930900900", defaults={"city": "Berlin", "country": "DE"}
    )
    supplier, _ = Supplier.objects.get_or_create(name="Carrier One")
    carrier, _ = Carrier.objects.get_or_create(name="Carrier One", defaults={"supplier": supplier})
    Trunk.objects.get_or_create(
        name="carrier-one",
        defaults={"carrier": carrier, "dial_template": "PJSIP/{number}@carrier-one", "priority": 1},
    )
    if not RateDeck.objects.filter(carrier=carrier).exists():
        deck = calls.deck_upload(
            carrier=carrier,
            actor=admin,
            filename="carrier-one-2026.csv",
            content=DEMO_DECK,
            mapping=calls.PRESETS["standard"],
            effective_from=tz.now() - timedelta(days=120),
        )
        calls.deck_import(deck_id=deck.pk)
    phone = Phone.objects.filter(member=member).first() or calls.phone_add(
        member=member, number="+4915123456789"
    )
    Phone.objects.filter(pk=phone.pk, verified_at__isnull=True).update(
        verified_at=tz.now(), verification_code=""
    )
    if not calls.plan_for(member).pin_hash:
        calls.pin_set(member=member, pin="2468")
    for n, (digits, seconds) in enumerate(
        [("030123456", 312), ("00442079460123", 75), ("015112345678", 0)]
    ):
        uniqueid = f"demo-call-{n}"
        if CallRecord.objects.filter(uniqueid=uniqueid).exists():
            continue
        calls.call_authorize(
            uniqueid=uniqueid,
            member=member,
            caller=phone.number,
            access_number=access,
            digits=digits,
        )
        calls.call_settle(
            uniqueid=uniqueid,
            dial_status="ANSWER" if seconds else "NOANSWER",
            answered_at=D(1000),
            ended_at=D(1000 + seconds),
        )
        CallRecord.objects.filter(uniqueid=uniqueid).update(
            started_at=tz.now() - timedelta(days=n + 1, hours=3)
        )
