"""The simulated dialplan and manager interface against the real FastAGI server and the real
reconciliation, over sockets: what bench/agi_failover.py relies on.

The panel dialplan (extensions_panel.conf) passes over a server that refuses or closes
without a decision, keeps each hangup in AstDB until a server took it, and the
reconciliation (telephony.reconcile) settles what is left through AMI.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from panel.models import CreditHold, MemberBalance, UsageEvent
from telephony import rating, reconcile
from telephony.ami import ActionFailed, Ami
from telephony.asterisk_sim import AmiServer, Call, Dialplan
from telephony.fastagi import Server
from telephony.models import CallRecord, CallState, SettledBy
from tests.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)

NODE = "sim-node"
BERLIN = "030123456"  # conftest's deck: +4930 at 0.008/min in 1/1


@pytest.fixture
def closes_at_once() -> Iterator[tuple[str, int]]:
    """A server that accepts and closes without a word, as a FastAGI server whose sessions
    are all taken does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield "127.0.0.1", listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def a_call(caller, access, uniqueid: str = "1796300000.11") -> Call:
    return Call(uniqueid=uniqueid, caller=caller.number, access=access.number, dtmf=[BERLIN])


def test_authorize_fails_over_from_a_refused_port_and_a_full_server(
    agi_server, closes_at_once, carrier, access, caller
):
    refused = ("127.0.0.1", free_port())
    dialplan = Dialplan([refused, closes_at_once, agi_server], node=NODE)
    call = dialplan.authorize(a_call(caller, access), first=0)
    assert call.variables["AUTH_RESULT"] == "OK"
    # The third server decided, on the third attempt.
    assert (call.variables["PANEL_INDEX"], call.variables["PANEL_ATTEMPT"]) == ("3", "2")
    assert call.applications == []
    assert call.args == [access.number, caller.number, NODE]
    record = CallRecord.objects.get(uniqueid=call.uniqueid)
    assert (record.state, record.node) == (CallState.AUTHORIZED, NODE)
    assert set(dialplan.channels) == {call.uniqueid}

    # Settled by the live server; the AstDB entry written first is gone again.
    t0 = time.time() - 60
    dialplan.answered(call, at=t0)
    assert dialplan.hangup(call, ended=t0 + 12.25)
    assert dialplan.astdb == {}
    assert dialplan.channels == {}
    record.refresh_from_db()
    assert (record.state, record.billed_seconds, record.settled_by) == (
        CallState.SETTLED,
        13,
        SettledBy.HANGUP,
    )


def test_no_server_deciding_plays_try_later_and_holds_nothing(closes_at_once, access, caller):
    dialplan = Dialplan([("127.0.0.1", free_port()), closes_at_once])
    call = dialplan.authorize(a_call(caller, access))
    assert "AUTH_RESULT" not in call.variables
    assert call.applications == ["Playback(custom/try-later)"]
    assert dialplan.channels == {}
    # The hangup handler has nothing to settle and writes nothing.
    assert not dialplan.hangup(call)
    assert dialplan.astdb == {}


def test_a_settle_no_server_takes_waits_in_astdb_and_the_reconciliation_settles_it_once(
    fastagi_server: Server, agi_server, carrier, access, caller, alice
):
    dialplan = Dialplan([agi_server], node=NODE)
    call = dialplan.authorize(a_call(caller, access))
    assert call.variables["AUTH_RESULT"] == "OK"
    t0 = time.time() - 60
    dialplan.answered(call, at=t0)
    # The only server stops (a deploy): its port refuses, both settle attempts fail.
    assert fastagi_server.drain(2) == 0
    assert not dialplan.hangup(call, ended=t0 + 42.5)
    token = call.variables["SETTLE_TOKEN"]
    assert dialplan.astdb == {
        f"/panel/settle/{call.uniqueid}": f"ANSWER/{t0:.3f}/{t0 + 42.5:.3f}/1/{token}",
        f"/panel/answer/{call.uniqueid}": f"{int(t0)}/1",
    }
    assert dialplan.channels == {}
    assert CallRecord.objects.get(uniqueid=call.uniqueid).state == CallState.AUTHORIZED

    with AmiServer(dialplan.astdb, dialplan.channels) as ami_server:
        with Ami(ami_server.url) as ami:
            passed = reconcile.calls_reconcile(node=NODE, ami=ami)
        assert (passed.live, passed.settled, passed.gone, passed.failed) == (0, 1, 0, 0)
        assert dialplan.astdb == {}
        with Ami(ami_server.url) as ami:
            again = reconcile.calls_reconcile(node=NODE, ami=ami)
        assert (again.settled, again.gone) == (0, 0)

    record = CallRecord.objects.get(uniqueid=call.uniqueid)
    expected = rating.cost(billed=43, per_minute=Decimal("0.008"), connect_fee=Decimal(0))
    assert (record.state, record.settled_by) == (CallState.SETTLED, SettledBy.RECONCILIATION)
    assert (record.connected_seconds, record.billed_seconds, record.cost) == (
        Decimal("42.500"),
        43,
        expected,
    )
    assert UsageEvent.objects.filter(source_key=f"hold:{record.hold_key}").count() == 1
    assert CreditHold.objects.get(key=record.hold_key).state == "settled"
    assert MemberBalance.objects.get(member=alice).held == 0


def test_a_call_whose_channel_is_gone_is_ended_by_the_reconciliation(
    agi_server, carrier, access, caller, alice
):
    dialplan = Dialplan([agi_server], node=NODE)
    call = dialplan.authorize(a_call(caller, access))
    assert call.variables["AUTH_RESULT"] == "OK"
    answered_at = time.time() - 5
    dialplan.answered(call, at=answered_at)
    with AmiServer(dialplan.astdb, dialplan.channels) as ami_server:
        # A pass while the call is up notes that it was seen.
        with Ami(ami_server.url) as ami:
            seen = reconcile.calls_reconcile(node=NODE, ami=ami)
        assert (seen.live, seen.gone) == (1, 0)
        record = CallRecord.objects.get(uniqueid=call.uniqueid)
        assert record.seen_at is not None
        # Asterisk is killed: the channel goes without its hangup handler.
        dialplan.drop(call)
        # Another node's pass does not judge this node's calls.
        with Ami(ami_server.url) as ami:
            other = reconcile.calls_reconcile(
                node="other-node", ami=ami, now=timezone.now() + timedelta(seconds=11)
            )
        assert other.gone == 0
        with Ami(ami_server.url) as ami:
            gone = reconcile.calls_reconcile(
                node=NODE, ami=ami, now=timezone.now() + timedelta(seconds=11)
            )
    assert (gone.live, gone.settled, gone.gone) == (0, 0, 1)
    record.refresh_from_db()
    assert (record.state, record.settled_by) == (CallState.SETTLED, SettledBy.CHANNEL_GONE)
    # Billed from the answer Asterisk kept (whole seconds) to when the call was last seen.
    connected = Decimal(str(record.seen_at.timestamp())) - int(answered_at)
    assert abs(record.connected_seconds - connected) < Decimal("0.002")
    assert 5 <= record.billed_seconds <= 7
    assert dialplan.astdb == {}
    assert CreditHold.objects.get(key=record.hold_key).state == "settled"
    assert MemberBalance.objects.get(member=alice).held == 0


def test_the_manager_interface_checks_the_login_and_refuses_other_actions():
    astdb: dict[str, str] = {}
    with AmiServer(astdb, secret="right") as ami_server:
        wrong = ami_server.url.replace(":right@", ":wrong@")
        with pytest.raises(ActionFailed, match="Authentication failed"):
            Ami(wrong).open()
        with Ami(ami_server.url) as ami:
            ami.action("DBPut", Family="panel", Key="settle/1.1", Val="x")
            ami.action("DBPut", Family="panelx", Key="settle/1.2", Val="y")
            tree = ami.action_list("DBGetTree", Family="panel", Key="settle")
            assert [(e["Key"], e["Val"]) for e in tree] == [("/panel/settle/1.1", "x")]
            with pytest.raises(ActionFailed, match="Invalid/unknown command: Originate"):
                ami.action("Originate", Channel="Local/1@x")
            ami.action("DBDel", Family="panel", Key="settle/1.1")
            with pytest.raises(ActionFailed, match="could not be deleted"):
                ami.action("DBDel", Family="panel", Key="settle/1.1")
            assert ami.action("CoreStatus")["CoreCurrentCalls"] == "0"
    assert astdb == {"/panelx/settle/1.2": "y"}
    assert ami_server.actions[:2] == ["Challenge", "Login"]
