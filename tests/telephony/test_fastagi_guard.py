"""The AGI port closed to strangers (issue 13, part E; items 1, 4 and 5 of its list).

Each test runs the real FastAGI server in a thread on a loopback port, against the test
database, and speaks to it over TCP: as Asterisk does (``telephony.asterisk_sim``) or as a
stranger, a slow peer or a broken one would (raw sockets).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from panel.models import CreditHold, MemberBalance, UsageEvent
from panel.services import ledger
from telephony import asterisk_sim, services
from telephony.fastagi import Server
from telephony.models import CallPlan, CallRecord, CallState
from tests.conftest import free_port
from tests.telephony.conftest import where

pytestmark = pytest.mark.django_db(transaction=True)

ACCESS = "+4930900900"
ALICE = "+4915123456789"  # alice's verified phone (the `caller` fixture)


def call(
    server: Server,
    *,
    uniqueid: str = "call-1",
    caller: str = ALICE,
    dtmf: tuple[str, ...] = ("030123456",),
    script: str = "authorize",
    node: str = "ast1",
    **kw: Any,
) -> asterisk_sim.Call:
    """One call as Asterisk places it: authorize with access number, caller ID and node."""
    return asterisk_sim.run(
        asterisk_sim.Call(
            uniqueid=uniqueid,
            caller=caller,
            access=ACCESS,
            script=script,
            args=[ACCESS, caller, node],
            dtmf=list(dtmf),
            **kw,
        ),
        *where(server),
        timeout=15,
    )


def settle(
    server: Server,
    uniqueid: str,
    *,
    status: str = "ANSWER",
    answered: float | None = 1000.0,
    ended: float | None = 1060.0,
    token: str | None = None,
) -> asterisk_sim.Call:
    """The hangup handler's settle; the call's own token unless another is given."""
    token = services.settle_token(uniqueid) if token is None else token
    args = [status, str(answered or ""), str(ended or ""), "1", token]
    return asterisk_sim.run(
        asterisk_sim.Call(uniqueid=uniqueid, caller="", access="", script="settle", args=args),
        *where(server),
        timeout=15,
    )


def env_block(uniqueid: str = "raw-1", script: str = "authorize") -> bytes:
    """An environment block as Asterisk sends it, ended by the empty line."""
    lines = [
        "agi_network: yes",
        f"agi_network_script: {script}",
        f"agi_request: agi://127.0.0.1/{script}",
        f"agi_uniqueid: {uniqueid}",
        f"agi_callerid: {ALICE}",
        f"agi_arg_1: {ACCESS}",
        f"agi_arg_2: {ALICE}",
        "",
    ]
    return "".join(line + "\n" for line in lines).encode()


def connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(where(server), timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed the connection (None: still open), and what it sent."""
    began = time.monotonic()
    received = b""
    while True:
        remaining = seconds - (time.monotonic() - began)
        if remaining <= 0:
            return None, received
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return None, received
        except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
            return time.monotonic() - began, received
        if not chunk:
            return time.monotonic() - began, received
        received += chunk


def closed_at_once(sock: socket.socket) -> None:
    """The server closed the connection within a second, without a word."""
    closed, said = closed_within(sock, 3)
    assert closed is not None, "the connection was kept open"
    assert closed < 1.0, f"closed after {closed:.2f}s"
    assert said == b"", f"the server said {said!r}"


def commands(done: asterisk_sim.Call) -> list[str]:
    """What the server sent the channel."""
    return [line for direction, line in done.transcript if direction == ">>"]


def wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# Who may connect --------------------------------------------------------------------------


def test_a_peer_outside_fastagi_allow_is_closed_at_once(start_server, carrier, access, caller):
    """Loopback is not in the list: the connection ends before a word, and nothing is held.

    Before, anyone reaching the port could place calls with a forged caller ID.
    """
    server = start_server(allow=["10.9.9.0/24"])
    with connect(server) as sock:
        sock.sendall(env_block("stranger-1"))
        closed, said = closed_within(sock, 3)
    assert closed is not None, "a stranger's connection was kept open"
    assert closed < 1.0, f"closed after {closed:.2f}s"
    assert said == b"", "the server spoke to a stranger"
    assert not CallRecord.objects.exists()
    assert not CreditHold.objects.exists()
    assert wait_until(lambda: not server.peers), f"peers still counted: {server.peers}"


def test_a_peer_in_fastagi_allow_is_served(start_server, carrier, access, caller):
    server = start_server(allow=["192.0.2.0/24", "127.0.0.1"])
    done = call(server)
    assert done.variables["AUTH_RESULT"] == "OK"
    assert CallRecord.objects.get(uniqueid="call-1").state == CallState.AUTHORIZED


def test_a_peer_has_at_most_max_per_peer_connections(
    start_server, carrier, access, caller, monkeypatch
):
    """Two idle connections from 127.0.0.1 use its share; its third is closed at once.

    Another peer (127.0.0.2) is still served meanwhile, and 127.0.0.1 is again once its
    idle connections are gone.
    """
    server = start_server(max_per_peer=2)
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(server)) for _ in range(2)]
        assert wait_until(lambda: server.peers.get("127.0.0.1") == 2)
        with connect(server) as third:
            third.sendall(env_block("third"))
            closed_at_once(third)
            # The cap is per peer: another Asterisk node is not held up by this one.
        create = socket.create_connection

        def from_another_peer(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            kwargs["source_address"] = ("127.0.0.2", 0)
            return create(address, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(asterisk_sim.socket, "create_connection", from_another_peer)
            other = call(server, uniqueid="other-peer")
            freed = settle(server, "other-peer", status="BUSY")
        assert other.variables["AUTH_RESULT"] == "OK"
        assert freed.variables["SETTLED"] == "OK"
        for sock in idle:
            sock.close()
    assert wait_until(lambda: "127.0.0.1" not in server.peers), server.peers
    assert call(server, uniqueid="after").variables["AUTH_RESULT"] == "OK"


# The environment block --------------------------------------------------------------------


def test_a_peer_sending_a_byte_a_second_is_closed_within_the_env_deadline(
    start_server, carrier, access, caller
):
    """Slowloris: every read gets a byte in time, but the block must be whole within 5 s.

    Before, the timeout was per read: a byte every 20 s kept a session (and its thread)
    as long as the peer liked. The read timeout is 30 s here, so only the env deadline can
    close it.
    """
    server = start_server(read_timeout=30)
    block = env_block("slow-1")
    with connect(server) as sock:
        began = time.monotonic()
        closed_at = None
        for byte in block[:12]:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - began
                break
            closed, said = closed_within(sock, 1.0)
            assert said == b""
            if closed is not None:
                closed_at = time.monotonic() - began
                break
    assert closed_at is not None, "a peer sending a byte a second was kept for 12 s"
    assert 4.5 <= closed_at <= 6.5, f"closed after {closed_at:.2f}s, not at the 5 s deadline"
    assert not CallRecord.objects.exists()
    assert wait_until(lambda: not server.peers)


def test_an_environment_of_too_many_lines_closes_the_session(start_server, carrier, access, caller):
    """201 lines and no end of the block: closed as soon as the 201st arrives."""
    server = start_server(read_timeout=30)
    lines = b"".join(f"agi_x{n}: y\n".encode() for n in range(201))
    with connect(server) as sock:
        sock.sendall(lines)
        closed_at_once(sock)
        assert not CallRecord.objects.exists()
    assert wait_until(lambda: not server.peers)
    assert call(server).variables["AUTH_RESULT"] == "OK", "the server is still fine"


def test_an_environment_line_over_4096_bytes_closes_the_session(
    start_server, carrier, access, caller
):
    """A line that never ends is not buffered: closed after 4097 bytes of it."""
    server = start_server(read_timeout=30)
    with connect(server) as sock:
        sock.sendall(b"agi_network: yes\nagi_callerid: " + b"1" * 5000)
        closed_at_once(sock)
        assert not CallRecord.objects.exists()
    assert not CreditHold.objects.exists()
    assert wait_until(lambda: not server.peers)


def test_a_line_of_exactly_4096_bytes_is_still_read(start_server, carrier, access, caller):
    """The bound is on what Asterisk never sends, not on what it may."""
    server = start_server()
    padding = "agi_calleridname: " + "x" * (4096 - len("agi_calleridname: ") - 1)
    block = env_block("long-name").replace(b"agi_network: yes\n", f"{padding}\n".encode())
    with connect(server) as sock:
        sock.sendall(block)
        sock.settimeout(5)
        first = sock.recv(4096)
    assert first.startswith(b"GET DATA custom/enter-number"), first


def test_sixty_four_idle_connections_do_not_refuse_a_call(start_server, carrier, access, caller):
    """Connections that never send their environment take no call slot.

    Before, 64 of them (the session cap) refused every call until they went away.
    """
    server = start_server()  # the defaults: 64 authorize, 16 settle sessions, 80 per peer
    with contextlib.ExitStack() as stack:
        for _ in range(64):
            stack.enter_context(connect(server))
        assert wait_until(lambda: server.peers.get("127.0.0.1") == 64)
        began = time.monotonic()
        done = call(server)
        took = time.monotonic() - began
        assert done.variables["AUTH_RESULT"] == "OK"
        assert took < 1.0, f"the call took {took:.2f}s beside 64 idle connections"
        assert settle(server, "call-1").variables["SETTLED"] == "OK"


def test_idle_connections_filling_every_slot_are_freed_by_the_env_deadline(
    start_server, carrier, access, caller
):
    """As many idle connections as the server takes: calls fail over meanwhile, and within
    the 5 s deadline the idle ones are closed and calls are served again."""
    server = start_server(max_sessions=2, settle_sessions=1, read_timeout=30)
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(server)) for _ in range(3)]
        began = time.monotonic()
        assert wait_until(lambda: server.peers.get("127.0.0.1") == 3)
        # Closed at once without a decision: the dialplan tries the next server.
        with connect(server) as meanwhile:
            meanwhile.sendall(env_block("meanwhile"))
            closed_at_once(meanwhile)
        for sock in idle:
            closed, _ = closed_within(sock, 7 - (time.monotonic() - began))
            assert closed is not None, "an idle connection outlived the env deadline"
        freed = time.monotonic() - began
    assert 4.5 <= freed <= 6.5, f"the idle connections were closed after {freed:.2f}s"
    assert call(server).variables["AUTH_RESULT"] == "OK"


# Slots ------------------------------------------------------------------------------------


def test_settles_have_slots_of_their_own(start_server, carrier, access, caller, alice):
    """Both authorize slots taken by callers at a prompt: a hangup still settles at once,
    and a third caller is closed without a decision (the dialplan tries the next server).

    Before, settles and callers shared the slots: a settle refused was a call never billed.
    """
    CallPlan.objects.filter(member=alice).update(max_concurrent=10)
    ledger.payment_record(
        actor=None,
        member=alice,
        amount=Decimal("20.00"),
        received_on=timezone.localdate(),
        reference="a hold for each call",
        source_key="alice-more",
    )
    server = start_server(max_sessions=2)
    assert call(server, uniqueid="earlier").variables["AUTH_RESULT"] == "OK"
    slow = [
        asterisk_sim.Call(
            uniqueid=f"slow-{n}",
            caller=ALICE,
            access=ACCESS,
            args=[ACCESS, ALICE, "ast1"],
            dtmf=["030123456"],
            dtmf_delay_s=3.0,
        )
        for n in range(2)
    ]
    threads = [
        threading.Thread(target=asterisk_sim.run, args=(c, *where(server)), daemon=True)
        for c in slow
    ]
    for thread in threads:
        thread.start()
    assert wait_until(
        lambda: all(any(line.startswith("GET DATA") for line in commands(c)) for c in slow)
    ), "the slow callers never reached their prompt"
    began = time.monotonic()
    settled = settle(server, "earlier")
    took = time.monotonic() - began
    third = call(server, uniqueid="third")
    for thread in threads:
        thread.join(10)
    assert settled.variables["SETTLED"] == "OK"
    assert took < 1.0, f"the settle waited {took:.2f}s behind the callers"
    assert CallRecord.objects.get(uniqueid="earlier").state == CallState.SETTLED
    assert commands(third) == [], "the third caller got a session beyond max_sessions"
    assert "AUTH_RESULT" not in third.variables
    assert not CallRecord.objects.filter(uniqueid="third").exists()
    # The slow callers were served in full meanwhile.
    assert [c.variables.get("AUTH_RESULT") for c in slow] == ["OK", "OK"]


def test_a_settle_waits_a_little_for_a_slot_an_authorize_does_not(
    start_server, carrier, access, caller, alice
):
    """With the other server restarting, every settle attempt of the dialplan comes here
    within milliseconds: one settle slot busy for a moment must not send it to AstDB."""
    CallPlan.objects.filter(member=alice).update(max_concurrent=10, per_call_cap=Decimal("1"))
    server = start_server(settle_sessions=1, settle_wait_s=2.0)
    assert call(server, uniqueid="first").variables["AUTH_RESULT"] == "OK"
    assert call(server, uniqueid="second").variables["AUTH_RESULT"] == "OK"
    server.slots["settle"].acquire()  # a settle in progress holds the only slot
    releaser = threading.Timer(0.5, server.slots["settle"].release)
    releaser.start()
    began = time.monotonic()
    settled = settle(server, "first")
    took = time.monotonic() - began
    releaser.join()
    assert settled.variables["SETTLED"] == "OK"
    assert 0.4 < took < 2.0
    # Past the wait, the settle is not taken (the dialplan keeps it for the reconciliation).
    impatient = start_server(settle_sessions=1, settle_wait_s=0.2)
    impatient.slots["settle"].acquire()
    try:
        refused = settle(impatient, "second")
    finally:
        impatient.slots["settle"].release()
    assert "SETTLED" not in refused.variables
    assert CallRecord.objects.get(uniqueid="second").state == CallState.AUTHORIZED


def test_a_server_refuses_connections_until_it_is_told_to_listen(start_server, carrier, access):
    """The command loads the rates before it listens: until then Asterisk's connection is
    refused and the dialplan goes to the other server, instead of waiting in silence."""
    server = Server(("127.0.0.1", free_port()), listen=False)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(where(server), timeout=2).close()
        server.server_activate()
        socket.create_connection(where(server), timeout=2).close()
    finally:
        server.server_close()


# Settles prove they belong to their call ---------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "0" * 24,
        "right-but-upper",
        "right-but-one-digit",
        "token-of-another-call",
        "right-plus-one",
    ],
)
def test_a_forged_settle_is_refused_and_changes_nothing(
    agi_server, carrier, access, caller, alice, forged
):
    """From another connection, without the call's token: SETTLED=REFUSED, the call stays
    authorized, its hold held, nothing billed; the hangup handler's settle still bills it.

    Before, the first settle won: a stranger could bill any call, or make it free.
    """
    host, port = agi_server
    server_address = (host, port)
    right = services.settle_token("call-1")
    token = {
        "right-but-upper": right.upper(),
        "right-but-one-digit": right[:-1] + ("0" if right[-1] != "0" else "1"),
        "token-of-another-call": services.settle_token("call-2"),
        "right-plus-one": right + "0",
    }.get(forged, forged)
    authorized = asterisk_sim.run(
        asterisk_sim.Call(
            uniqueid="call-1",
            caller=ALICE,
            access=ACCESS,
            args=[ACCESS, ALICE, "ast1"],
            dtmf=["030123456"],
        ),
        *server_address,
    )
    assert authorized.variables["SETTLE_TOKEN"] == right
    args = ["BUSY", "", "", "1", token]  # "it was never answered": a free call
    refused = asterisk_sim.run(
        asterisk_sim.Call(uniqueid="call-1", caller="", access="", script="settle", args=args),
        *server_address,
    )
    assert refused.variables["SETTLED"] == "REFUSED"
    record = CallRecord.objects.get(uniqueid="call-1")
    assert record.state == CallState.AUTHORIZED
    assert CreditHold.objects.get(key="call:call-1").state == "held"
    assert not UsageEvent.objects.exists()
    # The call's own hangup: 60 s to Berlin at 0.008/min in 1/1.
    args = ["ANSWER", "1000", "1060", "1", right]
    for _ in range(2):  # the second settle of a call changes nothing
        done = asterisk_sim.run(
            asterisk_sim.Call(uniqueid="call-1", caller="", access="", script="settle", args=args),
            *server_address,
        )
        assert done.variables["SETTLED"] == "OK"
    record.refresh_from_db()
    assert (record.state, record.billed_seconds, str(record.cost)) == ("settled", 60, "0.008000")
    assert UsageEvent.objects.filter(source_key="hold:call:call-1").count() == 1
    balance = MemberBalance.objects.get(member=alice)
    assert (balance.held, str(balance.unbilled)) == (0, "0.008000")


def test_a_settle_for_a_call_never_authorized_is_unknown(agi_server, carrier, access, caller):
    """A token that is right for its uniqueid, but no such call: nothing is made up."""
    host, port = agi_server
    args = ["ANSWER", "1000", "1060", "1", services.settle_token("never")]
    done = asterisk_sim.run(
        asterisk_sim.Call(uniqueid="never", caller="", access="", script="settle", args=args),
        host,
        port,
    )
    assert done.variables["SETTLED"] == "UNKNOWN"
    assert not CallRecord.objects.exists()


# What lands on the record -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "node", "is_check", "kept_node"),
    [
        ("authorize", "ast1", False, "ast1"),
        ("authorize?check=1", "ast-2", True, "ast-2"),
        ("authorize?x=1&check=1", "check", True, "check"),
        ("authorize?check=10", "ast1", False, "ast1"),
        ("authorize", "Bad Node;DROP", False, ""),
    ],
)
def test_the_node_and_the_check_flag_land_on_the_record(
    start_server, carrier, access, caller, script, node, is_check, kept_node
):
    """agi_arg_3 names the Asterisk node (the reconciliation judges calls by it); a node
    name that is not one is dropped. ``authorize?check=1`` is `manage.py dialin_check`."""
    server = start_server()
    done = call(server, script=script, node=node)
    assert done.variables["AUTH_RESULT"] == "OK"
    record = CallRecord.objects.get(uniqueid="call-1")
    assert (record.node, record.is_check) == (kept_node, is_check)
