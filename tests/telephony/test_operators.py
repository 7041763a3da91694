"""What operators and members see of calls (issue 13, part H; items 3, 9, 13 and 14).

Calls go through the real FastAGI server over TCP with ``telephony.asterisk_sim`` as
Asterisk: one log line per session, abandoned calls recorded, checks kept out of the
member's history, caller IDs in every form, typos asked again, late settles after either
expiry job billed once, and the staff Live calls page.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

import phonenumbers
import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from hypothesis import assume, given
from hypothesis import strategies as st

from panel.models import CreditHold, MemberBalance, UsageEvent
from panel.services import ledger
from telephony import asterisk_sim, services
from telephony.models import CallPlan, CallRecord, CallState, SettledBy

server_db = pytest.mark.django_db(transaction=True)

ACCESS = "+4930900900"
ALICE = "+4915123456789"  # alice's verified phone (the `caller` fixture)
STRANGER = "+4989111111"
SESSION_FIELDS = {"peer", "script", "uniqueid", "decision", "reason", "ms"}
CALL_FIELDS = SESSION_FIELDS | {"caller", "access", "node", "member", "destination"}


def call(
    where: tuple[str, int],
    *,
    uniqueid: str = "call-1",
    caller: str = ALICE,
    dtmf: tuple[str, ...] = ("030123456",),
    **kw: Any,
) -> asterisk_sim.Call:
    host, port = where
    return asterisk_sim.run(
        asterisk_sim.Call(
            uniqueid=uniqueid,
            caller=caller,
            access=ACCESS,
            args=[ACCESS, caller, "ast1"],
            dtmf=list(dtmf),
            **kw,
        ),
        host,
        port,
        timeout=15,
    )


def settle(
    where: tuple[str, int], uniqueid: str, status: str = "ANSWER", seconds: int = 60
) -> asterisk_sim.Call:
    """The hangup handler's settle, with the call's token; answered ``seconds``."""
    host, port = where
    answered, ended = ("1000", str(1000 + seconds)) if status == "ANSWER" else ("", "")
    args = [status, answered, ended, "1", services.settle_token(uniqueid)]
    return asterisk_sim.run(
        asterisk_sim.Call(uniqueid=uniqueid, caller="", access="", script="settle", args=args),
        host,
        port,
        timeout=15,
    )


def prompts(done: asterisk_sim.Call) -> list[str]:
    """The sound files the caller heard or was asked over, in order."""
    return [
        line.split()[2]
        for direction, line in done.transcript
        if direction == ">>" and line.startswith(("STREAM", "GET DATA"))
    ]


def session_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == "telephony.sessions"
    ]


@pytest.fixture
def more_credit(alice) -> None:
    """Credit for several holds of the per-call cap at once, and room for them."""
    ledger.payment_record(
        actor=None,
        member=alice,
        amount=Decimal("20.00"),
        received_on=timezone.localdate(),
        reference="more",
        source_key="alice-more",
    )
    services.plan_for(alice)
    CallPlan.objects.filter(member=alice).update(max_concurrent=5)
    alice.refresh_from_db()  # her plan may be cached on her from before the update


# One log line per session ------------------------------------------------------------------


@server_db
def test_one_json_line_per_session_for_operators(
    agi_server, carrier, access, caller, alice, more_credit, caplog
):
    """Authorized, refused, settled, abandoned: each session one line on telephony.sessions,
    JSON, with who called where, what was decided, why and how long it took.

    Before, outcomes were kept only in the server's memory.
    """
    caplog.set_level(logging.INFO, logger="telephony.sessions")
    call(agi_server, uniqueid="ok-1")
    call(agi_server, uniqueid="no-1", dtmf=("09001234567",))  # premium: blocked by the plan
    settle(agi_server, "ok-1")
    call(agi_server, uniqueid="gone-1", hangup_after_commands=0)
    lines = session_lines(caplog)
    by_session = {(line["script"], line["uniqueid"]): line for line in lines}
    assert len(by_session) == len(lines) == 4, lines

    authorized = by_session["authorize", "ok-1"]
    assert set(authorized) >= CALL_FIELDS, authorized
    assert authorized["decision"] == "authorized"
    assert authorized["reason"] == "14400s"
    assert authorized["peer"] == "127.0.0.1"
    assert (authorized["caller"], authorized["access"], authorized["node"]) == (
        ALICE,
        ACCESS,
        "ast1",
    )
    assert (authorized["member"], authorized["destination"]) == (alice.pk, "+4930123456")
    assert isinstance(authorized["ms"], float | int)
    assert 0 < authorized["ms"] < 5000

    refused = by_session["authorize", "no-1"]
    assert set(refused) >= CALL_FIELDS, refused
    assert refused["decision"] == "refused"
    assert refused["reason"] == "premium numbers are blocked by the call plan"
    assert refused["destination"] == "+499001234567"

    settled = by_session["settle", "ok-1"]
    assert set(settled) >= SESSION_FIELDS, settled
    assert (settled["decision"], settled["member"]) == ("settled", alice.pk)
    assert settled["reason"] == "60s, 0.008000"

    abandoned = by_session["authorize", "gone-1"]
    assert set(abandoned) >= SESSION_FIELDS, abandoned
    assert abandoned["decision"] == "abandoned"
    assert abandoned["stage"] == "destination"
    assert abandoned["member"] == alice.pk


# Abandoned calls ---------------------------------------------------------------------------


@server_db
@pytest.mark.parametrize(
    ("who", "dtmf", "hangup_after", "where", "member"),
    [
        ("verified", (), 0, "destination", True),
        ("stranger", ("ACCOUNT",), 1, "PIN", False),
        ("stranger", (), 0, "PIN", False),  # asked for the account: the PIN stage already
        ("unverified", (), 0, "verification code", False),
    ],
)
def test_a_caller_who_hangs_up_before_the_decision_leaves_an_abandoned_record(
    agi_server, carrier, access, caller, alice, who, dtmf, hangup_after, where, member
):
    """Before, such calls left no trace: nobody could tell a caller who gave up at the PIN
    prompt from one who never called."""
    services.pin_set(member=alice, pin="4711")
    account = services.plan_for(alice).account_number
    number = {"verified": ALICE, "stranger": STRANGER, "unverified": "+4930777777"}[who]
    if who == "unverified":
        services.phone_add(member=alice, number=number)
    keyed = tuple(account if d == "ACCOUNT" else d for d in dtmf)
    done = call(agi_server, caller=number, dtmf=keyed, hangup_after_commands=hangup_after)
    assert ("<<", "HANGUP") in done.transcript
    assert "AUTH_RESULT" not in done.variables
    record = CallRecord.objects.get(uniqueid="call-1")
    assert record.state == CallState.ABANDONED
    assert record.refusal == f"hung up at the {where} prompt"
    assert (record.caller, record.access_number, record.node) == (number, access, "ast1")
    assert record.member == (alice if member else None)
    assert not CreditHold.objects.exists()
    assert MemberBalance.objects.get(member=alice).held == 0


# Checks kept out of the member's history ----------------------------------------------------


@server_db
def test_dialin_check_stays_out_of_the_members_call_history(
    agi_server, carrier, access, caller, alice, login
):
    """Before, every `manage.py dialin_check` left a check-… call in the member's history."""
    call(agi_server, uniqueid="real-1", dtmf=("030123456",))
    settle(agi_server, "real-1")
    host, port = agi_server
    out = io.StringIO()
    call_command(
        "dialin_check",
        "--from",
        caller.number,
        "--to",
        "+4930999999",
        "--server",
        f"{host}:{port}",
        stdout=out,
    )
    assert "decision: OK" in out.getvalue()
    check = CallRecord.objects.get(destination="+4930999999")
    assert check.uniqueid.startswith("check-")
    assert (check.is_check, check.node, check.member) == (True, "check", alice)
    page = login(alice).get(reverse("telephony:index")).content.decode()
    assert "+4930123456" in page, "the member's own call is in the history"
    assert "+4930999999" not in page


# Caller IDs in every form -------------------------------------------------------------------


@server_db
@pytest.mark.parametrize(
    "presented", ["+4915123456789", "004915123456789", "4915123456789", "015123456789"]
)
def test_a_verified_phone_is_known_in_every_number_form(
    agi_server, carrier, access, caller, alice, presented
):
    """Carriers send the caller ID as they like; the access number is German, so all four
    are alice's phone, and she is not asked for account and PIN.

    Before, only the E.164 form was recognised.
    """
    done = call(agi_server, caller=presented)
    assert done.variables["AUTH_RESULT"] == "OK"
    assert prompts(done) == ["custom/enter-number"]
    record = CallRecord.objects.get(uniqueid="call-1")
    assert (record.member, record.caller) == (alice, ALICE)


MOBILE_PREFIXES = [
    "151",
    "152",
    "155",
    "157",
    "159",
    "160",
    "162",
    "163",
    *map(str, range(170, 180)),
]


@given(prefix=st.sampled_from(MOBILE_PREFIXES), rest=st.text("0123456789", min_size=7, max_size=8))
def test_caller_e164_reads_any_german_mobile_in_the_four_forms(prefix, rest):
    national = prefix + rest
    e164 = "+49" + national
    assume(phonenumbers.is_valid_number(phonenumbers.parse(e164)))
    forms = [e164, "0049" + national, "49" + national, "0" + national]
    assert [services.caller_e164(form, "DE") for form in forms] == [e164] * 4


def test_caller_e164_gives_nothing_for_what_is_no_number():
    for garbage in ("", "anonymous", "Unknown", "12", "+49abc", "0" * 25):
        assert services.caller_e164(garbage, "DE") == ""


# A mistyped destination --------------------------------------------------------------------


@server_db
def test_three_typos_end_the_call_with_a_refusal(agi_server, carrier, access, caller, alice):
    """Each typo is said and the number asked again, three times in all; then the call is
    refused for the last one. A fourth number is never asked for.

    Before, the first typo ended the call.
    """
    done = call(agi_server, dtmf=("00999123456", "*#*", "0033123456789", "030123456"))
    assert prompts(done) == [
        "custom/enter-number",
        "custom/invalid-number",
        "custom/enter-number",
        "custom/invalid-number",
        "custom/enter-number",
        "custom/no-rate",
    ]
    assert done.variables["AUTH_RESULT"] == "REFUSED"
    assert done.variables["AUTH_REASON"] == "no rate for +33123456789"
    record = CallRecord.objects.get(uniqueid="call-1")
    assert (record.state, record.destination) == (CallState.REFUSED, "+33123456789")
    assert not CreditHold.objects.exists()


# Late settles after expiry -------------------------------------------------------------------


@server_db
@pytest.mark.parametrize(
    "jobs", [("ledger",), ("telephony",), ("ledger", "telephony"), ("telephony", "ledger")]
)
def test_a_late_settle_after_either_expiry_bills_once(
    agi_server, carrier, access, caller, alice, caplog, jobs
):
    """The hangup arrives after the expiry jobs gave up on the call (a server down for
    hours): it is billed once, in whichever order the ledger's and telephony's jobs ran.

    Before, with the ledger's hold expiry first, the settle raised `LedgerError: hold … is
    expired` with a traceback and the call stayed authorized for good.
    """
    caplog.set_level(logging.INFO)
    assert call(agi_server).variables["AUTH_RESULT"] == "OK"
    later = timezone.now() + timedelta(hours=5)  # past 4 h of limit and the 10 min margin
    for job in jobs:
        if job == "ledger":
            assert ledger.release_expired_holds(now=later) == (1 if job == jobs[0] else 0)
        else:
            assert services.expire_unsettled_calls(now=later) == 1
    assert CreditHold.objects.get(key="call:call-1").state == "expired"
    assert MemberBalance.objects.get(member=alice).held == 0
    expected = CallState.EXPIRED if "telephony" in jobs else CallState.AUTHORIZED
    assert CallRecord.objects.get(uniqueid="call-1").state == expected

    for _ in range(2):  # the hangup handler tries each server twice
        assert settle(agi_server, "call-1").variables["SETTLED"] == "OK"
    record = CallRecord.objects.get(uniqueid="call-1")
    assert (record.state, record.billed_seconds) == (CallState.SETTLED, 60)
    assert record.cost == Decimal("0.008000")
    assert UsageEvent.objects.filter(source_key="hold:call:call-1").count() == 1
    balance = MemberBalance.objects.get(member=alice)
    assert (balance.held, balance.unbilled) == (0, Decimal("0.008000"))
    assert balance.available == Decimal("5.00") - Decimal("0.008000")
    troubles = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not troubles, [r.getMessage() for r in troubles]


# The staff Live calls page -------------------------------------------------------------------


def _section(page: str, heading: str, following: str | None) -> str:
    start = page.index(f'id="{heading}"')
    end = page.index(f'id="{following}"') if following else len(page)
    return page[start:end]


@pytest.mark.django_db
def test_live_calls_shows_stuck_calls_and_calls_ended_without_their_hangup(
    carrier, access, caller, alice, more_credit, carol, bob, login
):
    """A call a minute past its limit still authorized lost its hangup: Stuck. A call the
    reconciliation ended (its channel gone) is listed with how it ended."""
    for uniqueid, digits in (("live-1", "030111111"), ("stuck-1", "030222222")):
        decision = services.call_authorize(
            uniqueid=uniqueid, member=alice, caller=ALICE, access_number=access, digits=digits
        )
        assert decision.ok, decision.reason
    CallRecord.objects.filter(uniqueid="stuck-1").update(
        started_at=timezone.now() - timedelta(hours=4, minutes=2)
    )
    assert services.call_authorize(
        uniqueid="gone-1", member=alice, caller=ALICE, access_number=access, digits="030555555"
    ).ok
    services.call_settle(
        uniqueid="gone-1",
        dial_status="ANSWER",
        answered_at=Decimal(1000),
        ended_at=Decimal(1030),
        settled_by=SettledBy.CHANNEL_GONE,
    )
    page = login(carol).get(reverse("telephony:staff_live")).content.decode()
    in_progress = _section(page, "live-heading", "stuck-heading")
    stuck = _section(page, "stuck-heading", "unusual-heading")
    unusual = _section(page, "unusual-heading", None)
    assert "+4930111111" in in_progress
    assert "+4930222222" not in in_progress
    assert "stuck-1" in stuck
    assert "+4930222222" in stuck
    assert "live-1" not in stuck
    assert "+4930555555" in unusual
    assert "Channel gone without a hangup" in unusual
    assert "+4930111111" not in unusual
    assert login(bob).get(reverse("telephony:staff_live")).status_code in (302, 403)


@pytest.mark.django_db
def test_a_call_the_expiry_gave_up_on_is_listed_as_never_settled(
    carrier, access, caller, alice, carol, login
):
    assert services.call_authorize(
        uniqueid="lost-1", member=alice, caller=ALICE, access_number=access, digits="030444444"
    ).ok
    CallRecord.objects.filter(uniqueid="lost-1").update(
        started_at=timezone.now() - timedelta(hours=5)
    )
    assert services.expire_unsettled_calls() == 1
    page = login(carol).get(reverse("telephony:staff_live")).content.decode()
    unusual = _section(page, "unusual-heading", None)
    assert "+4930444444" in unusual
    assert "Never settled" in unusual
