"""Calls through the real FastAGI server over TCP, with Asterisk's side spoken exactly."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from panel.models import CreditHold, MemberBalance, UsageEvent
from panel.services import ledger
from telephony import asterisk_sim, services
from telephony.models import CallPlan, CallRecord, CallState, Phone

pytestmark = pytest.mark.django_db(transaction=True)


def call(server, *, uniqueid="call-1", caller="+4915123456789", dtmf=("00441234567890",), **kw):
    host, port = server
    return asterisk_sim.run(
        asterisk_sim.Call(
            uniqueid=uniqueid,
            caller=caller,
            access="+4930900900",
            args=["+4930900900", caller],
            dtmf=list(dtmf),
            **kw,
        ),
        host,
        port,
    )


def settle(server, uniqueid, status="ANSWER", answered=None, ended=None, route=1, token=None):
    """The hangup handler's settle, with the token the call was given at authorize."""
    host, port = server
    token = services.settle_token(uniqueid) if token is None else token
    args = [status, str(answered or ""), str(ended or ""), str(route), token]
    return asterisk_sim.run(
        asterisk_sim.Call(uniqueid=uniqueid, caller="", access="", script="settle", args=args),
        host,
        port,
    )


def test_verified_caller_id_goes_out_with_a_limit_from_the_hold(
    agi_server, carrier, access, caller
):
    done = call(agi_server, dtmf=["00442079460123"])
    assert done.variables["AUTH_RESULT"] == "OK"
    assert done.variables["DIAL_STRING_1"] == "PJSIP/+442079460123@carrier1"
    assert done.variables["DIAL_STRING_2"] == "PJSIP/+442079460123@carrier1b"
    # 5.00 of credit, per-call cap 5.00, UK at 0.015/min in 60/1: 60 s + (5 - 0.015) / 0.00025 s
    # = 20000 s, more than the longest call allowed (4 hours).
    assert done.variables["LIMIT_MS_1"] == str(4 * 3600 * 1000)
    record = CallRecord.objects.get(uniqueid="call-1")
    assert record.state == CallState.AUTHORIZED
    assert record.destination == "+442079460123"
    assert CreditHold.objects.get(key="call:call-1").amount == Decimal("5")
    # Asterisk ends every FastAGI session with HANGUP; the server takes it calmly.
    assert done.transcript[-1] == ("<<", "HANGUP")


def test_authorize_asked_twice_gives_the_first_answer(agi_server, carrier, access, caller, alice):
    """Even when the first answer used up the credit and the last free call slot."""
    CallPlan.objects.filter(member=alice).update(max_concurrent=1)
    first = call(agi_server, uniqueid="twice")
    again = call(agi_server, uniqueid="twice")
    assert first.variables["AUTH_RESULT"] == again.variables["AUTH_RESULT"] == "OK"
    assert first.variables["LIMIT_MS_1"] == again.variables["LIMIT_MS_1"]
    assert CreditHold.objects.filter(member=alice).count() == 1
    assert MemberBalance.objects.get(member=alice).held == Decimal("5")


def test_settle_bills_connected_seconds_once(agi_server, carrier, access, caller, alice):
    call(agi_server, uniqueid="call-2", dtmf=["030123456"])  # Berlin, 1/1 at 0.008
    settle(agi_server, "call-2", answered=1000.0, ended=1125.4)
    settle(agi_server, "call-2", answered=1000.0, ended=1125.4)  # the hangup handler ran twice
    record = CallRecord.objects.get(uniqueid="call-2")
    assert record.state == CallState.SETTLED
    assert record.billed_seconds == 126
    assert record.cost == Decimal("0.016800")
    assert UsageEvent.objects.filter(source_key="hold:call:call-2").count() == 1
    balance = MemberBalance.objects.get(member=alice)
    assert balance.held == 0
    assert balance.unbilled == Decimal("0.016800")


def test_unanswered_calls_cost_nothing(agi_server, carrier, access, caller, alice):
    call(agi_server, uniqueid="call-3", dtmf=["030123456"])
    settle(agi_server, "call-3", status="BUSY")
    record = CallRecord.objects.get(uniqueid="call-3")
    assert (record.billed_seconds, record.cost) == (0, Decimal("0"))
    assert MemberBalance.objects.get(member=alice).held == 0


def test_unknown_caller_identifies_with_account_and_pin(agi_server, carrier, access, caller, alice):
    services.pin_set(member=alice, pin="4711")
    account = services.plan_for(alice).account_number
    done = call(agi_server, caller="+4989111111", dtmf=[account, "4711", "030123456"])
    assert done.variables["AUTH_RESULT"] == "OK"
    assert CallRecord.objects.get(uniqueid="call-1").member == alice


def test_three_wrong_pins_end_the_call(agi_server, carrier, access, caller, alice):
    services.pin_set(member=alice, pin="4711")
    account = services.plan_for(alice).account_number
    done = call(
        agi_server, caller="+4989111111", dtmf=[account, "1111", account, "2222", account, "3333"]
    )
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert "not identified" in done.variables["AUTH_REASON"]
    assert [c for d, c in done.transcript if d == ">>" and "pin-wrong" in c]


def test_phone_is_verified_by_calling_and_keying_the_code(
    agi_server, carrier, access, alice, caller
):
    phone = services.phone_add(member=alice, number="+49 30 1234567")
    done = call(agi_server, caller=phone.number, dtmf=[phone.verification_code, "030123456"])
    assert done.variables["AUTH_RESULT"] == "OK"
    phone.refresh_from_db()
    assert phone.verified_at is not None


@pytest.mark.parametrize(
    ("dtmf", "reason", "prompt"),
    [
        (["*#*", "12", "##"], "not a number", "custom/invalid-number"),
        (["00999123456"] * 3, "not a number", "custom/invalid-number"),
        (["0033123456789"] * 3, "no rate for", "custom/no-rate"),
        (["09001234567"], "blocked by the call plan", "custom/destination-blocked"),
    ],
)
def test_refusals_play_a_prompt_and_say_why(
    agi_server, carrier, access, caller, dtmf, reason, prompt
):
    done = call(agi_server, dtmf=dtmf)
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert reason in done.variables["AUTH_REASON"]
    assert any(prompt in command for direction, command in done.transcript if direction == ">>")
    assert CallRecord.objects.get(uniqueid="call-1").state == CallState.REFUSED


def test_a_mistyped_destination_is_asked_for_again(agi_server, carrier, access, caller):
    """Not a number, then a number no carrier has a rate for, then the right one."""
    done = call(agi_server, dtmf=["00999123456", "0033123456789", "030123456"])
    assert done.variables["AUTH_RESULT"] == "OK"
    prompts = [c for d, c in done.transcript if d == ">>" and "STREAM FILE" in c]
    assert any("invalid-number" in p for p in prompts)
    assert any("no-rate" in p for p in prompts)
    assert CallRecord.objects.get(uniqueid="call-1").destination == "+4930123456"


def test_a_suspended_member_is_refused_before_keying_in_a_number(
    agi_server, carrier, access, caller, alice
):
    from panel.models import Membership

    Membership.objects.filter(user=alice).update(status="suspended")
    done = call(agi_server)
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert "not a member in good standing" in done.variables["AUTH_REASON"]
    assert not [c for d, c in done.transcript if d == ">>" and "enter-number" in c]
    assert not CreditHold.objects.exists()


def test_no_credit_is_refused(agi_server, carrier, access, alice):
    phone = services.phone_add(member=alice, number="+49 151 99999999")
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now())
    done = call(agi_server, caller=phone.number, dtmf=["030123456"])
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert "does not pay the first block" in done.variables["AUTH_REASON"]


def test_hangup_during_the_prompt_leaves_nothing_held(agi_server, carrier, access, caller, alice):
    done = call(agi_server, dtmf=[], hangup_after_commands=0)
    assert ("<<", "HANGUP") in done.transcript
    assert not CreditHold.objects.exists()
    assert MemberBalance.objects.get(member=alice).held == 0


def test_long_prompt_before_dial_is_not_billed(agi_server, carrier, access, caller):
    """The caller spent 25 s in prompts; the callee was connected 3.5 s (Berlin, 1/1)."""
    call(agi_server, uniqueid="call-9", dtmf=["030123456"])
    answered_by_callee = 1725.0  # set by Dial's U() routine when the callee answered
    settle(agi_server, "call-9", answered=answered_by_callee, ended=answered_by_callee + 3.5)
    record = CallRecord.objects.get(uniqueid="call-9")
    assert record.billed_seconds == 4
    assert record.cost == Decimal("0.000533")


def test_the_server_keeps_its_database_connections(
    agi_server, carrier, access, caller, monkeypatch
):
    """A new PostgreSQL connection per session would cost more than the session's queries."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    opened = []
    connect = DatabaseWrapper.get_new_connection

    def counting(self, params):
        opened.append(1)
        return connect(self, params)

    monkeypatch.setattr(DatabaseWrapper, "get_new_connection", counting)
    for n in range(40):
        assert call(agi_server, uniqueid=f"keep-{n}").variables["AUTH_RESULT"] == "OK"
        settle(agi_server, f"keep-{n}", "ANSWER", 100, 110)
    # At most the server's four (the rate tables load through one of them too), none for
    # the session threads, not one per session (80). The connection that listens for
    # changes to callers (telephony.callers) was opened when the server started.
    assert len(opened) <= 4


def test_callers_keying_in_slowly_do_not_hold_up_other_calls(
    agi_server, carrier, access, caller, alice
):
    """Twenty callers take a second each over their digits; a twenty-first is not kept waiting.

    A session waits most of its life for the caller (prompts, digits), so sessions must not
    wait for each other: each has its thread, and only the database work is shared.
    """
    import threading

    CallPlan.objects.filter(member=alice).update(max_concurrent=30)
    slow = [
        threading.Thread(
            target=call,
            args=(agi_server,),
            kwargs={"uniqueid": f"slow-{n}", "caller": caller.number, "dtmf_delay_s": 1.0},
        )
        for n in range(20)
    ]
    for thread in slow:
        thread.start()
    time.sleep(0.3)  # all twenty are in their prompt now
    began = time.monotonic()
    done = call(agi_server, uniqueid="quick", caller=caller.number)
    waited = time.monotonic() - began
    for thread in slow:
        thread.join()
    assert "AUTH_RESULT" in done.variables
    assert waited < 0.5, f"the quick caller waited {waited:.2f}s for the slow ones"
    assert CallRecord.objects.filter(uniqueid__startswith="slow-").count() == 20


def test_a_call_setup_takes_one_statement_and_settling_three(
    agi_server, carrier, access, caller, alice, monkeypatch
):
    """Every statement is a round trip the caller waits for; these are the ones it takes.

    Authorize: the hold (telephony_call_hold) and the call record at once, as its own
    transaction. The rate comes from the server's memory once the deck's table is loaded, and
    the caller (phone, member, membership, plan) once a call identified it; the database
    answers until then (tests/telephony/test_callers.py). Settle: the call, its update, then
    the hold, the usage and the balance at once (begin and commit come on top).
    """
    ledger.payment_record(
        actor=None,
        member=alice,
        amount=Decimal("100.00"),
        received_on=timezone.localdate(),
        reference="more than the per-call cap",
        source_key="alice-more",
    )
    from telephony import fastagi

    statements: list[str] = []
    run = fastagi.Database.run

    def wrapper(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    def counting(self, function, *args, **kwargs):
        def counted(*args, **kwargs):
            with connection.execute_wrapper(wrapper):  # on the borrowed connection
                return function(*args, **kwargs)

        return run(self, counted, *args, **kwargs)

    monkeypatch.setattr(fastagi.Database, "run", counting)
    # The first call fills the routes cache, identifies the caller and starts loading the
    # deck's table; the fixtures' own changes to phones and plans may still be arriving.
    for warm_ups in range(1, 51):
        statements.clear()
        call(agi_server, uniqueid=f"warm-up-{warm_ups}")
        settle(agi_server, f"warm-up-{warm_ups}", "ANSWER", 100, 130)
        if not any("FROM telephony_rate" in s or "FROM telephony_phone" in s for s in statements):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the deck's rates or the caller never came from memory")
    for n in range(3):
        statements.clear()
        assert call(agi_server, uniqueid=f"count-{n}").variables["AUTH_RESULT"] == "OK"
        assert len(statements) == 1, statements
        statements.clear()
        settle(agi_server, f"count-{n}", "ANSWER", 100, 130)
        assert len(statements) == 3, statements
        assert not [s for s in statements if "SAVEPOINT" in s]
    assert CallRecord.objects.filter(state=CallState.SETTLED).count() == 3 + warm_ups
