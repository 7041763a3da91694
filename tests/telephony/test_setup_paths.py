"""Hypothesis: a call setup decides and writes the same whichever way it goes.

On PostgreSQL the usual setup is one round trip (telephony_call_hold and the call record);
with less credit than the per-call cap it is a transaction (the balance locked, then the busy
count, the hold and the record in one statement); SQLite (the demo) goes step by step through
credit_hold. Members in the same situation, one through each path, must get the same
decision, the same call record, hold and balance.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from unittest import mock

from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from panel.models import CreditHold, MemberBalance, Supplier
from panel.services import ledger
from telephony import services
from telephony.models import (
    AccessNumber,
    CallPlan,
    CallRecord,
    CallState,
    Carrier,
    DeckState,
    Rate,
    RateDeck,
    Trunk,
)
from tests.factories import make_user

CALL_FIELDS = ["state", "refusal", "destination", "destination_class", "limit_seconds"]
CALL_FIELDS += ["per_minute", "connect_fee", "initial_seconds", "increment_seconds", "cost"]
CALL_FIELDS += ["deck_id", "rate_id", "trunk_id", "access_number_id", "caller"]


class SetupPaths(TestCase):
    def world(self, rule):
        services.forget_routes()  # each example's trunks are rolled back with it
        carrier = Carrier.objects.create(name="C", supplier=Supplier.objects.create(name="Carrier"))
        Trunk.objects.create(carrier=carrier, name="t1", dial_template="PJSIP/{number}@t1")
        deck = RateDeck.objects.create(
            carrier=carrier,
            version=1,
            effective_from=timezone.now() - timedelta(days=1),
            source_name="deck.csv",
            source_sha256="0" * 64,
            state=DeckState.READY,
        )
        per_minute, connect_fee, initial, increment = rule
        Rate.objects.create(
            deck=deck,
            prefix="49",
            per_minute=per_minute,
            connect_fee=connect_fee,
            initial_seconds=initial,
            increment_seconds=increment,
        )
        return AccessNumber.objects.create(number="+4930900900", city="Berlin", country="DE")

    def member(self, name, *, credit, cap, max_concurrent, busy):
        member = make_user(email=f"{name}@example.org")
        ledger.balance_for(member)
        if credit:
            ledger.payment_record(
                actor=None,
                member=member,
                amount=credit,
                received_on=timezone.localdate(),
                reference=name,
                source_key=f"pay-{name}",
            )
        services.plan_for(member)
        CallPlan.objects.filter(member=member).update(
            per_call_cap=cap, max_concurrent=max_concurrent
        )
        for n in range(busy):
            CallRecord.objects.create(
                uniqueid=f"busy-{name}-{n}", member=member, state=CallState.AUTHORIZED
            )
        member.refresh_from_db()
        return member

    def setup_call(self, member, access, *, mode):
        with (
            mock.patch.object(services, "_with_function", return_value=mode == "function"),
            mock.patch.object(services, "_in_one_statement", return_value=mode != "steps"),
        ):
            decision = services.call_authorize(
                uniqueid=f"call-{member.pk}",
                member=member,
                caller="+4915123456789",
                access_number=access,
                digits="0301234567",
            )
        call = CallRecord.objects.filter(uniqueid=f"call-{member.pk}").values(*CALL_FIELDS)
        hold = CreditHold.objects.filter(key=f"call:call-{member.pk}").first()
        balance = MemberBalance.objects.get(member=member)
        return (
            (decision.ok, decision.reason, decision.prompt, decision.limit_seconds),
            decision.dial_strings,
            list(call),
            hold and (hold.amount, hold.state, hold.service, hold.member_id == member.pk),
            (balance.posted, balance.held, balance.unbilled),
        )

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        credit=st.integers(min_value=0, max_value=300).map(lambda n: Decimal(n) / 100),
        cap=st.sampled_from([Decimal("0.01"), Decimal("0.05"), Decimal("1.00"), Decimal("5")]),
        max_concurrent=st.integers(min_value=1, max_value=3),
        busy=st.integers(min_value=0, max_value=3),
        rule=st.tuples(
            st.sampled_from([Decimal(0), Decimal("0.008"), Decimal("0.05"), Decimal("1.99")]),
            st.sampled_from([Decimal(0), Decimal("0.01")]),
            st.sampled_from([60, 30, 1, 0]),
            st.sampled_from([60, 6, 1]),
        ),
    )
    def test_both_paths_decide_and_write_the_same(self, credit, cap, max_concurrent, busy, rule):
        access = self.world(rule)
        situation = {"credit": credit, "cap": cap, "max_concurrent": max_concurrent, "busy": busy}
        results = {}
        for mode in ("function", "statement", "steps"):
            member = self.member(mode, **situation)
            results[mode] = self.setup_call(member, access, mode=mode)
            # Asked again for the same call, each path gives its first answer, writing nothing.
            assert self.setup_call(member, access, mode=mode) == results[mode]
        assert results["function"] == results["steps"]
        assert results["statement"] == results["steps"]
