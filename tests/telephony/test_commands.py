from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from panel.models import CreditHold
from telephony.models import AccessNumber, CallRecord

pytestmark = pytest.mark.django_db(transaction=True)


def test_dialin_check_prints_the_decision_and_frees_the_hold(agi_server, carrier, access, caller):
    host, port = agi_server
    out = io.StringIO()
    call_command(
        "dialin_check",
        "--from",
        caller.number,
        "--to",
        "+4930123456",
        "--server",
        f"{host}:{port}",
        stdout=out,
    )
    text = out.getvalue()
    assert "decision: OK" in text
    assert "dial string 1: PJSIP/+4930123456@carrier1 (limit " in text
    assert not CreditHold.objects.filter(state="held").exists()
    # A check, not a call of the member's: kept apart from the history, billed nothing.
    record = CallRecord.objects.get()
    assert record.is_check
    assert (record.state, record.cost, record.settled_by) == ("settled", 0, "hangup")


def test_dialin_check_says_why_a_call_is_refused(agi_server, carrier, access, caller):
    host, port = agi_server
    out = io.StringIO()
    call_command(
        "dialin_check",
        "--from",
        caller.number,
        "--to",
        "+4990012345678",
        "--server",
        f"{host}:{port}",
        stdout=out,
    )
    assert "decision: REFUSED" in out.getvalue()
    assert "reason: " in out.getvalue()


def test_dialplan_has_the_hangup_handler_the_limits_and_the_answer_time(access):
    out = io.StringIO()
    call_command(
        "asterisk_dialplan",
        "--agi",
        "panel.example.coop:4573,panel.example.coop:4574",
        "--node",
        "ast1",
        stdout=out,
    )
    plan = out.getvalue()
    assert "[dialin]" in plan
    assert "CHANNEL(hangup_handler_push)=panel-hangup,s,1" in plan
    assert "Set(PANEL_SERVERS=panel.example.coop:4573&panel.example.coop:4574)" in plan
    assert (
        "AGI(agi://${CUT(PANEL_SERVERS,&,${PANEL_INDEX})}/authorize,${ARG1},${CALLERID(num)},ast1)"
        in plan
    )
    assert "Playback(custom/try-later)" in plan
    assert (
        "Dial(${DIAL_STRING_${TRY}},45,iL(${LIMIT_MS_${TRY}}:60000:30000)"
        "U(panel-answered^${CHANNEL}^${UNIQUEID}^${TRY}))" in plan
    )
    assert "Set(DB(panel/answer/${ARG2})=${EPOCH}/${ARG3})" in plan
    assert (
        "Set(DB(panel/settle/${UNIQUEID})="
        "${DIALSTATUS}/${PANEL_ANSWER}/${PANEL_END}/${TRY}/${SETTLE_TOKEN})" in plan
    )
    assert "/settle,${DIALSTATUS},${PANEL_ANSWER},${PANEL_END},${TRY},${SETTLE_TOKEN})" in plan
    # Each server twice before the settle is left to the reconciliation.
    assert "GotoIf($[${PANEL_ATTEMPT} < 4]?settle)" in plan


def test_dialplan_takes_the_access_number_in_every_form_carriers_deliver(access):
    AccessNumber.objects.create(number="+4940900900", city="Hamburg", country="DE")
    out = io.StringIO()
    call_command("asterisk_dialplan", "--agi", "127.0.0.1:4573", stdout=out)
    plan = out.getvalue()
    for form in ("+4930900900", "4930900900", "004930900900", "030900900"):
        assert f"exten => {form},1,Gosub(panel-call,s,1(+4930900900))" in plan
    assert "exten => 040900900,1,Gosub(panel-call,s,1(+4940900900))" in plan
    # Any other DID, with or without a plus, reaches the server, which says it is unknown.
    assert "exten => _X.,1,Gosub(panel-call,s,1(${EXTEN}))" in plan
    assert "exten => _+X.,1,Gosub(panel-call,s,1(${EXTEN}))" in plan


@pytest.mark.parametrize(
    "args",
    [
        ["--agi", "panel:4573;Hangup()"],
        ["--agi", "panel:4573,"],
        ["--node", "Ast 1"],
        ["--node", "ast1\nexten"],
    ],
)
def test_dialplan_refuses_unsafe_arguments(access, args):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("asterisk_dialplan", *args, stdout=io.StringIO())
