"""Dial-in calls end to end: a real Asterisk, the panel's dialplan, real FastAGI processes.

Asterisk is built from source (tests/asterisk/build.py) and runs the dialplan that
``manage.py asterisk_dialplan`` prints, unchanged. Calls come in through Local channels with
a scripted caller keying DTMF at each prompt and scripted callees (tests/asterisk/pbx.py);
the FastAGI servers are ``manage.py fastagi`` processes, so that SIGKILL and SIGTERM are the
real thing. What must hold whatever happens to the servers: every connected call is billed
for its connected time, once, and no hold or call slot outlives its call.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from panel.models import CreditHold, MemberBalance, Supplier, UsageEvent, User
from panel.services import ledger
from telephony import reconcile, services
from telephony.ami import Ami
from telephony.models import (
    AccessNumber,
    CallPlan,
    CallRecord,
    CallState,
    Carrier,
    Phone,
    Trunk,
)
from tests.asterisk.pbx import Call, Pbx, event_time
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.django_db(transaction=True)

NODE = "ast-test"
ACCESS = "+4930900900"
ALICE_MOBILE = "+4915123456789"
BERLIN = "030123456"  # keyed by the caller: +4930123456
# 0.60 a minute, per second (1/1): a cent a second, so seconds and cents read alike.
DECK_A = b"prefix,destination,rate,increment,connect_fee\n49,Germany,0.600000,1/1,0\n"
DECK_B = b"prefix,destination,rate,increment,connect_fee\n49,Germany,1.200000,1/1,0.010000\n"
DECK_C = b"prefix,destination,rate,increment,connect_fee\n33,France,0.010000,60/60,0\n"


# The network: carriers, an access number, alice and her phone -----------------------------


def _carrier(name: str, deck: bytes, template: str, priority: int, admin: User) -> Trunk:
    supplier = Supplier.objects.create(name=name)
    carrier = Carrier.objects.create(name=name, supplier=supplier)
    trunk = Trunk.objects.create(
        carrier=carrier, name=name.lower(), dial_template=template, priority=priority
    )
    uploaded = services.deck_upload(
        carrier=carrier,
        actor=admin,
        filename=f"{name}.csv",
        content=deck,
        mapping=services.PRESETS["standard"],
        effective_from=timezone.now() - timedelta(days=1),
    )
    services.deck_import(deck_id=uploaded.pk)
    return trunk


def _fund(member: User, amount: str, reference: str) -> None:
    ledger.payment_record(
        actor=None,
        member=member,
        amount=Decimal(amount),
        received_on=timezone.localdate(),
        reference=reference,
        source_key=reference,
    )


def _verified_phone(member: User, number: str) -> Phone:
    phone = services.phone_add(member=member, number=number)
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now(), verification_code="")
    return phone


@pytest.fixture
def network(transactional_db: None, alice: User, carol: User) -> Trunk:
    """Carrier A answers every call; alice has a verified mobile and 5.00 of credit.

    Her per-call cap is 1.00 (100 s at carrier A's rate), so that several calls at once each
    get a hold.
    """
    trunk = _carrier("CarrierA", DECK_A, "Local/{number}@sim-answer/n", 1, carol)
    AccessNumber.objects.create(number=ACCESS, city="Berlin", country="DE")
    _verified_phone(alice, ALICE_MOBILE)
    CallPlan.objects.filter(member=alice).update(max_concurrent=5, per_call_cap=Decimal("1.00"))
    _fund(alice, "5.00", "alice-calls")
    return trunk


# FastAGI servers as processes --------------------------------------------------------------


@dataclass
class AgiProcess:
    port: int
    log: Path
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> AgiProcess:
        """Start it and wait until it serves (its rates and callers loaded)."""
        mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "fastagi", "--listen", self.address, *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while b"FastAGI listening" not in self.log.read_bytes()[mark:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"fastagi on {self.address} did not start:\n{self.text()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, an OOM kill; nothing is finished."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def term(self) -> None:
        """SIGTERM, as systemctl restart sends it; returns at once (the drain goes on)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def served(self, uniqueid: str, script: str) -> bool:
        """Whether this process logged a session of ``script`` for the call."""
        return any(
            uniqueid in line and f'"script": "{script}"' in line
            for line in self.log.read_text(errors="replace").splitlines()
        )


@pytest.fixture
def fastagi(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., AgiProcess]]:
    """Starts ``manage.py fastagi`` processes on the test database; all stopped at the end."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        # The settle tokens are HMACs with the secret key: the same as this process's.
        "SECRET_KEY": settings.SECRET_KEY,
        "PANEL_STATE_DIR": str(tmp_path / "state"),
        "LOG_LEVEL": "INFO",
        "FASTAGI_DRAIN_SECONDS": "20",
    }
    started: list[AgiProcess] = []

    def start(*args: str, port: int | None = None) -> AgiProcess:
        port = port or free_port()
        process = AgiProcess(port, tmp_path / f"fastagi-{port}.log", list(args), env)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()


def load_dialplan(pbx: Pbx, *servers: str) -> str:
    """The panel's dialplan for these FastAGI servers, loaded into Asterisk as printed."""
    out = io.StringIO()
    call_command("asterisk_dialplan", "--agi", ",".join(servers), "--node", NODE, stdout=out)
    pbx.load_dialplan(out.getvalue())
    return out.getvalue()


def reconcile_now(pbx: Pbx) -> reconcile.Pass:
    """One pass of the beat job's reconciliation against this Asterisk."""
    with Ami(pbx.ami_url) as ami:
        return reconcile.calls_reconcile(node=NODE, ami=ami)


def record(call: Call) -> CallRecord:
    return CallRecord.objects.get(uniqueid=call.uniqueid)


def connected_seconds(call: Call) -> float:
    """How long the callee was connected, by Asterisk's own events (answer to hangup)."""
    answered = call.wait_answered()
    ends = [
        e for e in call.events if e.get("Event") == "Hangup" and e.get("Uniqueid") == call.uniqueid
    ]
    return event_time(ends[-1]) - event_time(answered)


def assert_nothing_held(member: User) -> None:
    assert not CreditHold.objects.filter(member=member, state="held").exists()
    assert MemberBalance.objects.get(member=member).held == 0
    assert not CallRecord.objects.filter(member=member, state=CallState.AUTHORIZED).exists()


# Calls --------------------------------------------------------------------------------------


def test_a_verified_caller_in_every_number_form_is_billed_its_connected_seconds(
    pbx, fastagi, network, alice
):
    """Carriers send caller IDs and DIDs in international, national and 00 forms."""
    server = fastagi()
    load_dialplan(pbx, server.address)
    forms = [
        (ALICE_MOBILE, ACCESS),
        ("004915123456789", "4930900900"),
        ("4915123456789", "030900900"),
        ("015123456789", "004930900900"),
    ]
    calls = [pbx.call(did, caller_id=cid, digits=[BERLIN], hold=2) for cid, did in forms]
    for call in calls:
        call.wait_done(40)
    for call in calls:
        assert call.variable("AUTH_RESULT") == "OK", call.describe()
        assert not call.played("enter-pin"), "identified by the caller ID, no PIN asked"
        assert call.dial_statuses() == ["ANSWER"]
        done = record(call)
        assert done.state == CallState.SETTLED
        assert (done.member, done.caller, done.node) == (alice, ALICE_MOBILE, NODE)
        # Billed what the callee was connected, by the second (1/1), never the prompts.
        connected = connected_seconds(call)
        assert abs(float(done.connected_seconds) - connected) < 0.5, (done, connected)
        assert done.billed_seconds == math.ceil(done.connected_seconds)
        assert done.cost == Decimal(done.billed_seconds) / 100
        assert UsageEvent.objects.filter(source_key=f"hold:call:{call.uniqueid}").count() == 1
    assert pbx.db_tree("panel") == {}, "every settle was taken and its entry removed"
    assert_nothing_held(alice)


def test_account_and_pin_with_a_retry_then_a_lockout_across_calls(pbx, fastagi, network, alice):
    services.pin_set(member=alice, pin="2468")
    account = services.plan_for(alice).account_number
    server = fastagi()
    load_dialplan(pbx, server.address)
    stranger = "+498912345678"
    first = pbx.call(ACCESS, caller_id=stranger, digits=[account, "1111", account, "2468", BERLIN])
    first.wait_done(60)
    assert first.played("pin-wrong")
    assert first.variable("AUTH_RESULT") == "OK", first.describe()
    assert record(first).member == alice

    # Three wrong PINs from another phone: the account is locked across calls.
    other = "+498987654321"
    wrong = pbx.call(ACCESS, caller_id=other, digits=[account, "1", account, "2", account, "3"])
    wrong.wait_done(60)
    assert wrong.variable("AUTH_RESULT") == "REFUSED"
    right = pbx.call(ACCESS, caller_id="+498911112222", digits=[account, "2468"])
    right.wait_done(60)
    assert right.played("pin-locked"), right.describe()
    assert right.variable("AUTH_RESULT") == "REFUSED"
    assert not right.played("enter-number")
    assert record(right).refusal == "locked after wrong PINs"

    services.pin_unlock(member=alice, actor=alice)
    again = pbx.call(ACCESS, caller_id="+498911112222", digits=[account, "2468", BERLIN], hold=1)
    again.wait_done(60)
    assert again.variable("AUTH_RESULT") == "OK", again.describe()


def test_a_mistyped_destination_is_asked_for_again(pbx, fastagi, network):
    server = fastagi()
    load_dialplan(pbx, server.address)
    call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=["00999123", BERLIN], hold=1)
    call.wait_done(40)
    assert call.played("invalid-number")
    assert call.variable("AUTH_RESULT") == "OK", call.describe()
    assert record(call).destination == "+4930123456"


def test_the_limit_cuts_the_call_when_the_credit_is_spent(pbx, fastagi, network, alice):
    """Five seconds of credit per call: L() ends the call there, and five seconds are billed."""
    CallPlan.objects.filter(member=alice).update(per_call_cap=Decimal("0.05"))
    server = fastagi()
    load_dialplan(pbx, server.address)
    call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=30)
    call.wait_done(40)
    assert call.variable("LIMIT_MS_1") == "5000"
    assert 4.5 < connected_seconds(call) < 6.5
    done = record(call)
    assert (done.billed_seconds, done.cost) == (5, Decimal("0.05"))
    assert_nothing_held(alice)


def test_five_calls_at_once_on_sixty_seconds_of_credit_bill_at_most_the_credit(
    pbx, fastagi, network, bob, carol
):
    """bob has 0.60 (60 s) and a per-call cap of 0.12 (12 s): five calls, each cut at 12 s."""
    phones = [_verified_phone(bob, f"+491511234567{n}") for n in range(5)]
    CallPlan.objects.filter(member=bob).update(max_concurrent=5, per_call_cap=Decimal("0.12"))
    _fund(bob, "0.60", "bob-calls")
    server = fastagi()
    load_dialplan(pbx, server.address)
    calls = [pbx.call(ACCESS, caller_id=p.number, digits=[BERLIN], hold=60) for p in phones]
    for call in calls:
        call.wait_done(60)
    assert [c.variable("AUTH_RESULT") for c in calls] == ["OK"] * 5
    billed = sum(record(c).billed_seconds for c in calls)
    assert billed <= 60
    assert billed >= 55, "each call ran to its limit"
    balance = MemberBalance.objects.get(member=bob)
    assert balance.available >= 0
    assert_nothing_held(bob)


def test_a_hangup_during_the_prompts_holds_nothing_and_is_recorded(pbx, fastagi, network, alice):
    server = fastagi()
    load_dialplan(pbx, server.address)
    call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, hangup_at="enter-number")
    call.wait_done(30)
    done = record(call)
    assert done.state == CallState.ABANDONED
    assert "destination" in done.refusal
    assert_nothing_held(alice)


def test_failover_to_a_second_carrier_is_billed_at_the_rate_of_the_carrier_that_carried_it(
    pbx, fastagi, network, alice, carol
):
    Trunk.objects.filter(pk=network.pk).update(dial_template="Local/{number}@sim-congested/n")
    backup = _carrier("CarrierB", DECK_B, "Local/{number}@sim-answer/n", 2, carol)
    # Carrier C has no rate for Germany: its trunk must not be dialled at all.
    _carrier("CarrierC", DECK_C, "Local/{number}@sim-answer/n", 0, carol)
    server = fastagi()
    load_dialplan(pbx, server.address)
    call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=3)
    call.wait_done(40)
    assert call.variable("DIAL_COUNT") == "2"
    assert call.dial_statuses() == ["CONGESTION", "ANSWER"]
    done = record(call)
    assert (done.route, done.trunk_id, done.per_minute) == (2, backup.pk, Decimal("1.2"))
    assert done.cost == Decimal("0.01") + Decimal("1.2") * done.billed_seconds / 60
    usage = UsageEvent.objects.get(source_key=f"hold:call:{call.uniqueid}")
    assert usage.amount == done.cost
    assert "CarrierB" in usage.cost_source


def _authorizer(servers: list[AgiProcess], call: Call) -> AgiProcess:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for server in servers:
            if server.served(call.uniqueid, "authorize"):
                return server
        time.sleep(0.05)
    raise AssertionError("no server logged the call's authorize")


def test_the_server_that_authorized_is_killed_mid_call_and_the_other_bills_the_call(
    pbx, fastagi, network, alice
):
    servers = [fastagi(), fastagi()]
    load_dialplan(pbx, *(s.address for s in servers))
    call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=4)
    call.wait_answered(30)
    dead = _authorizer(servers, call)
    dead.kill()
    call.wait_done(30)
    survivor = next(s for s in servers if s is not dead)
    assert survivor.served(call.uniqueid, "settle")
    done = record(call)
    assert done.state == CallState.SETTLED
    assert (done.settled_by, done.billed_seconds) == (
        "hangup",
        math.ceil(done.connected_seconds),
    )
    assert done.billed_seconds >= 4
    # New calls go to the survivor without a gap.
    after = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=1)
    after.wait_done(30)
    assert after.variable("AUTH_RESULT") == "OK", after.describe()
    assert pbx.db_tree("panel") == {}
    assert_nothing_held(alice)


def test_every_server_gone_at_hangup_the_call_is_billed_by_the_reconciliation(
    pbx, fastagi, network, alice
):
    servers = [fastagi(), fastagi()]
    load_dialplan(pbx, *(s.address for s in servers))
    call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=3)
    call.wait_answered(30)
    for server in servers:
        server.kill()
    call.wait_done(30)
    assert record(call).state == CallState.AUTHORIZED
    kept = pbx.db_tree("panel")
    assert any(key.endswith(f"settle/{call.uniqueid}") for key in kept), kept

    passed = reconcile_now(pbx)
    assert passed.settled == 1
    done = record(call)
    assert (done.state, done.settled_by) == (CallState.SETTLED, "reconciliation")
    assert abs(float(done.connected_seconds) - connected_seconds(call)) < 0.5
    assert done.cost == Decimal(done.billed_seconds) / 100 > 0
    assert pbx.db_tree("panel") == {}
    # A second pass finds nothing, and bills nothing twice.
    assert reconcile_now(pbx).settled == 0
    assert UsageEvent.objects.filter(source_key=f"hold:call:{call.uniqueid}").count() == 1
    assert_nothing_held(alice)


def test_sigterm_lets_the_call_being_set_up_finish_and_new_calls_go_to_the_other_server(
    pbx, fastagi, network, alice
):
    servers = [fastagi(), fastagi()]
    load_dialplan(pbx, *(s.address for s in servers))
    # A caller identified by account and PIN takes a few seconds over the prompts.
    services.pin_set(member=alice, pin="2468")
    account = services.plan_for(alice).account_number
    call = pbx.call(ACCESS, caller_id="+498912345678", digits=[account, "2468", BERLIN], hold=2)
    call.wait_for(lambda e: e.get("Event") == "AGIExecStart", 20)
    busy = _session_owner(servers)
    busy.term()
    during = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=1)
    call.wait_done(60)
    during.wait_done(60)
    assert call.variable("AUTH_RESULT") == "OK", call.describe()
    assert call.agi_commands().count("GET DATA custom/enter-pin 7000 8") == 1, (
        "the session was finished, not cut and asked again"
    )
    assert during.variable("AUTH_RESULT") == "OK", during.describe()
    assert busy.proc is not None
    assert busy.proc.wait(30) == 0
    assert "0 sessions cut" in busy.text()
    for c in (call, during):
        assert record(c).state == CallState.SETTLED
    assert_nothing_held(alice)


def _session_owner(servers: list[AgiProcess]) -> AgiProcess:
    """The server with an established connection from Asterisk (a session in progress)."""
    for server in servers:
        assert server.proc is not None
        out = subprocess.run(
            ["ss", "-tnH", "state", "established", f"( sport = :{server.port} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if out.strip():
            return server
    raise AssertionError("no server has a session in progress")


def test_all_sessions_busy_the_call_fails_over_and_settles_still_get_through(
    pbx, fastagi, network, alice
):
    small = fastagi("--max-sessions", "1")
    load_dialplan(pbx, small.address)
    talking = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=6)
    talking.wait_answered(30)
    # A stranger sits at the account prompt, keying nothing: the one authorize slot is taken.
    waiting = pbx.call(ACCESS, caller_id="+498912345678", digits=[])
    waiting.wait_for(lambda e: e.get("Command", "").startswith("GET DATA"), 20)
    # One server only, and it is full: the caller hears "try again later", not silence.
    refused = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN])
    refused.wait_done(30)
    assert refused.played("try-later"), refused.describe()
    assert refused.variable("PLAYBACKSTATUS") == "SUCCESS"
    # The call in progress hangs up meanwhile: its settle has slots of its own.
    talking.wait_done(30)
    assert record(talking).state == CallState.SETTLED
    assert record(talking).settled_by == "hangup"
    # With a second server the full one is passed over.
    other = fastagi()
    load_dialplan(pbx, small.address, other.address)
    served = [pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=1) for _ in range(3)]
    for call in served:
        call.wait_done(40)
        assert call.variable("AUTH_RESULT") == "OK", call.describe()
    waiting.hangup()
    waiting.wait_done(30)


def test_no_server_at_all_the_caller_hears_a_prompt(pbx, network):
    load_dialplan(pbx, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN])
    call.wait_done(30)
    assert call.played("try-later")
    assert call.variable("PLAYBACKSTATUS") == "SUCCESS"
    assert call.variable("AUTH_RESULT") in (None, "")
    assert not CallRecord.objects.exists()


def test_a_blocked_balance_gives_try_later_within_two_seconds(pbx, fastagi, network, alice):
    server = fastagi()
    load_dialplan(pbx, server.address)
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"],
        dbname=db["NAME"],
    ) as other:
        other.execute(
            "SELECT * FROM panel_memberbalance WHERE member_id = %s FOR UPDATE", [alice.pk]
        )
        call = pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN])
        call.wait_done(30)
        other.rollback()
    assert call.played("try-later"), call.describe()
    keyed = [
        e for e in call.events if e.get("Event") == "DTMFEnd" and e.get("Uniqueid") == call.uniqueid
    ][-1]
    told = call.wait_for(
        lambda e: e.get("Event") == "AGIExecStart" and "try-later" in e.get("Command", "")
    )
    assert event_time(told) - event_time(keyed) < 2.0
    assert_nothing_held(alice)


def test_an_asterisk_crash_mid_call_is_billed_to_the_last_sight_and_frees_the_hold(
    fresh_pbx, fastagi, network, alice
):
    server = fastagi()
    load_dialplan(fresh_pbx, server.address)
    answered = fresh_pbx.call(ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=60)
    ringing = fresh_pbx.call(
        ACCESS, caller_id=ALICE_MOBILE, digits=[BERLIN], hold=60, answer_after=60
    )
    answered.wait_answered(30)
    ringing.wait_for(lambda e: e.get("Event") == "DialBegin", 30)
    time.sleep(3)
    seen = reconcile_now(fresh_pbx)
    assert seen.live >= 2
    assert seen.gone == 0
    assert record(answered).seen_at is not None
    fresh_pbx.kill()
    fresh_pbx.restart()
    # Calls are judged by their channel once their record is a little older than the pass.
    youngest = max(record(answered).started_at, record(ringing).started_at)
    time.sleep(max(0.0, (youngest + reconcile.GRACE - timezone.now()).total_seconds()))
    passed = reconcile_now(fresh_pbx)
    assert passed.gone == 2
    billed = record(answered)
    assert (billed.state, billed.settled_by) == (CallState.SETTLED, "channel_gone")
    # From the callee's answer to the pass that saw it up: about three seconds.
    assert 2 <= billed.billed_seconds <= 6
    unanswered = record(ringing)
    assert (unanswered.state, unanswered.cost) == (CallState.SETTLED, 0)
    assert_nothing_held(alice)
    assert fresh_pbx.db_tree("panel") == {}


def test_a_pass_goes_on_when_a_hangup_handler_deleted_its_entry_meanwhile(pbx, network):
    """Between a pass's read and its delete, the hangup handler may have got SETTLED=OK and
    deleted the entry itself: the pass goes on to the other entries and calls."""
    with Ami(pbx.ami_url) as ami:
        reconcile._forget(ami, "settle/already-gone")
        pbx.db_put("panel", "answer/stale", "1700000000/1")
        reconcile._forget(ami, "answer/stale")
    assert pbx.db_tree("panel") == {}
