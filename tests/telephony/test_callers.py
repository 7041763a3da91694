"""The FastAGI server keeps the callers it identified, and forgets them on any change."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from django.db import connection

from panel.models import Membership
from telephony.callers import CallerCache
from telephony.models import CallPlan, Phone
from tests.telephony.test_agi_flow import call, settle

pytestmark = pytest.mark.django_db(transaction=True)


def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.01)


def _suspend(phone: Phone) -> None:
    Membership.objects.filter(user=phone.member).update(status="suspended")


def _remove(phone: Phone) -> None:
    Phone.objects.filter(pk=phone.pk).delete()


def _lower_the_limit(phone: Phone) -> None:
    CallPlan.objects.filter(member=phone.member).update(max_concurrent=0)


def _another_phone(phone: Phone) -> None:
    Phone.objects.create(member=phone.member, number="+4915199999999")


@pytest.mark.parametrize("change", [_suspend, _remove, _lower_the_limit, _another_phone])
def test_a_known_caller_is_forgotten_when_phones_memberships_or_plans_change(
    fastagi_server, agi_server, carrier, access, caller, change
):
    callers = fastagi_server.callers
    assert call(agi_server, uniqueid="first").variables["AUTH_RESULT"] == "OK"
    until(lambda: caller.number in callers.entries, "alice's phone is kept")
    change(caller)
    until(lambda: caller.number not in callers.entries, "alice's phone is forgotten")


def test_the_call_after_a_suspension_is_refused_before_keying_in_a_number(
    fastagi_server, agi_server, carrier, access, caller
):
    assert call(agi_server, uniqueid="before").variables["AUTH_RESULT"] == "OK"
    until(lambda: caller.number in fastagi_server.callers.entries, "alice's phone is kept")
    _suspend(caller)
    until(lambda: not fastagi_server.callers.entries, "the callers are forgotten")
    done = call(agi_server, uniqueid="after")
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert "not a member in good standing" in done.variables["AUTH_REASON"]
    assert not [c for d, c in done.transcript if d == ">>" and "enter-number" in c]


def test_a_rolled_back_change_forgets_nothing(fastagi_server, agi_server, carrier, access, caller):
    from django.db import transaction

    assert call(agi_server, uniqueid="before").variables["AUTH_RESULT"] == "OK"
    until(lambda: caller.number in fastagi_server.callers.entries, "alice's phone is kept")
    generation = fastagi_server.callers.generation
    with pytest.raises(RuntimeError), transaction.atomic():
        _suspend(caller)
        raise RuntimeError("changed our mind")
    time.sleep(0.5)  # a notification would have arrived by now
    assert fastagi_server.callers.generation == generation
    assert caller.number in fastagi_server.callers.entries


def test_a_read_that_raced_a_change_is_not_kept(fastagi_server, carrier, access, caller):
    from telephony import services

    callers = fastagi_server.callers
    phone = services.identify(caller.number)
    before = callers.generation
    callers.forget()  # a change arrived while the phone was being read
    callers.fill(caller.number, phone, before)
    assert caller.number not in callers.entries
    callers.fill(caller.number, phone, callers.generation)
    assert caller.number in callers.entries


def test_a_caller_is_kept_for_a_minute_at_most(fastagi_server, carrier, access, caller):
    """Should the listening connection die without a word, no phone stays known for long."""
    from telephony import services

    callers = fastagi_server.callers
    callers.fill(caller.number, services.identify(caller.number), callers.generation)
    assert callers.get(caller.number) is not None
    callers.MAX_AGE_S = 0.2
    time.sleep(0.3)
    assert callers.get(caller.number) is None


def test_only_callers_identified_without_a_question_are_kept(
    fastagi_server, carrier, access, caller
):
    from telephony import services

    callers = fastagi_server.callers
    verified = services.identify(caller.number)
    Phone.objects.filter(pk=caller.pk).update(verified_at=None, verification_code="123456")
    unverified = services.identify(caller.number)
    Phone.objects.filter(pk=caller.pk).update(verified_at="2026-01-01T00:00:00Z")
    _suspend(caller)
    suspended = services.identify(caller.number)
    time.sleep(0.3)  # the notifications of these changes have arrived
    generation = callers.generation
    callers.fill(caller.number, unverified, generation)
    callers.fill(caller.number, suspended, generation)
    assert not callers.entries
    callers.fill(caller.number, verified, generation)  # the same generation is good
    assert caller.number in callers.entries


def test_while_nobody_listens_every_call_asks_the_database(
    fastagi_server, agi_server, carrier, access, caller
):
    callers: CallerCache = fastagi_server.callers
    callers.RETRY_S = 0.5
    calls = iter(range(1000))

    def one_call() -> bool:
        uniqueid = f"call-{next(calls)}"
        ok = call(agi_server, uniqueid=uniqueid).variables["AUTH_RESULT"] == "OK"
        settle(agi_server, uniqueid, "ANSWER", 100, 110)
        return ok

    assert one_call()
    until(lambda: caller.number in callers.entries, "alice's phone is kept")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN telephony_callers'"
        )
        assert cursor.fetchall() == [(True,)]
    until(lambda: not callers.listening.is_set(), "the server notices")
    assert not callers.entries
    assert one_call()
    assert caller.number not in callers.entries or callers.listening.is_set()
    until(callers.listening.is_set, "it listens again")
    until(lambda: one_call() and caller.number in callers.entries, "alice's phone is kept again")
