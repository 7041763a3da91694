from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from panel.models import CreditHold

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
    assert "dial string 1: PJSIP/+4930123456@carrier1" in text
    assert "limit: " in text
    assert not CreditHold.objects.filter(state="held").exists()


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


def test_dialplan_has_the_hangup_handler_the_limit_and_the_answer_time(access):
    out = io.StringIO()
    call_command("asterisk_dialplan", "--agi", "panel.example.coop:4573", stdout=out)
    plan = out.getvalue()
    assert "[dialin]" in plan
    assert "CHANNEL(hangup_handler_push)=panel-hangup,s,1" in plan
    assert "AGI(agi://panel.example.coop:4573/authorize,+4930900900,${CALLERID(num)})" in plan
    assert (
        "Dial(${DIAL_STRING_${TRY}},45,iL(${LIMIT_MS}:60000:30000)U(panel-answered^${CHANNEL}))"
        in plan
    )
    assert (
        "AGI(agi://panel.example.coop:4573/settle,${DIALSTATUS},${SHARED(PANEL_ANSWER_TS)}" in plan
    )
