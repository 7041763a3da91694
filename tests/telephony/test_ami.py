"""telephony/ami.py against a real Asterisk (tests/asterisk), and against broken peers."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from telephony import ami
from tests.asterisk.pbx import Pbx

# --- URLs --------------------------------------------------------------------------------------


def test_parse_url_reads_every_part_and_hides_the_secret() -> None:
    target = ami.parse_url("ami://panel:hunter%402@asterisk-1.example.coop:5038")
    assert target == ami.AmiTarget(
        host="asterisk-1.example.coop", port=5038, username="panel", secret="hunter@2"
    )
    assert "hunter" not in repr(target)
    assert "hunter" not in str(target)
    assert ami.parse_url("ami://panel:hunter2@[::1]:5038").host == "::1"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://panel:hunter2@host:5038", "must start with ami://"),
        ("ami://host:5038", "no USER:SECRET@ part"),
        ("ami://pa nel:hunter2@host:5038", "user name must match"),
        ("ami://panel@host:5038", "secret is missing"),
        ("ami://panel:hunter 2@host:5038", "secret is missing or has characters"),
        ("ami://panel:hunter%0A2@host:5038", "printable ASCII"),
        ("ami://panel:hunter2@host", "host must match"),
        ("ami://panel:hunter2@bad_host:5038", "host must match"),
        ("ami://panel:hunter2@host:0", "port must be a number from 1 to 65535"),
        ("ami://panel:hunter2@host:70000", "port must be a number from 1 to 65535"),
        ("ami://panel:hunter2@host:50a", "port must be a number"),
    ],
)
def test_parse_url_says_what_is_wrong_without_the_secret(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as failure:
        ami.parse_url(url)
    assert "hunter" not in str(failure.value)


# --- The real Asterisk ---------------------------------------------------------------------------


def test_login_and_an_action(pbx: Pbx) -> None:
    with ami.Ami(pbx.ami_url) as session:
        answer = session.action("Ping")
    assert answer["Response"] == "Success"
    assert answer["Ping"] == "Pong"


def test_a_wrong_secret_is_refused_for_good(pbx: Pbx) -> None:
    target = ami.AmiTarget(
        host="127.0.0.1", port=pbx.ami_port, username="harness", secret="wrong-secret"
    )
    with pytest.raises(ami.ActionFailed, match="refused the login") as failure:
        ami.Ami(target).open()
    assert failure.value.permanent
    assert failure.value.reason.endswith("Authentication failed")
    assert "wrong-secret" not in str(failure.value)


class Recorder:
    """A TCP relay to Asterisk that keeps what each side sent."""

    def __init__(self, upstream: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.upstream = upstream
        self.sent = {"client": bytearray(), "server": bytearray()}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.upstream))
        for source, sink, side in ((client, server, "client"), (server, client, "server")):
            threading.Thread(target=self._pump, args=(source, sink, side), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, side: str) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.sent[side] += data
                sink.sendall(data)
        sink.close()


def test_the_md5_challenge_keeps_the_secret_off_the_wire(pbx: Pbx) -> None:
    relay = Recorder(pbx.ami_port)
    target = ami.AmiTarget(
        host="127.0.0.1", port=relay.port, username="harness", secret=pbx.ami_target.secret
    )
    with ami.Ami(target) as session:
        session.action("Ping")
    client, server = bytes(relay.sent["client"]), bytes(relay.sent["server"])
    assert pbx.ami_target.secret.encode() not in client
    assert b"Action: Challenge\r\n" in client
    assert b"AuthType: MD5\r\n" in client
    assert b"Events: off\r\n" in client
    challenge = re.search(rb"Challenge: (\S+)\r\n", server)
    key = re.search(rb"Key: (\S+)\r\n", client)
    assert challenge
    assert key
    # Asterisk's own scheme: md5(challenge + secret) in hex.
    expected = hashlib.md5(
        challenge.group(1) + pbx.ami_target.secret.encode(), usedforsecurity=False
    ).hexdigest()
    assert key.group(1).decode() == expected
    assert b"Message: Authentication accepted" in server


def test_an_error_response_raises_with_asterisks_message(pbx: Pbx) -> None:
    with ami.Ami(pbx.ami_url) as session:
        with pytest.raises(ami.ActionFailed, match="DBGet: Database entry not found") as failure:
            session.action("DBGet", Family="panel", Key="nothing-here")
        assert failure.value.permanent
        assert failure.value.reason == "Database entry not found"
        # The session goes on after an error.
        assert session.action("Ping")["Ping"] == "Pong"


def test_astdb_put_tree_and_delete(pbx: Pbx) -> None:
    with ami.Ami(pbx.ami_url) as session:
        assert session.action_list("DBGetTree", Family="panel") == []
        session.action("DBPut", Family="panel", Key="settle/1796300000.1", Val="ANSWER/1/31")
        session.action("DBPut", Family="panel", Key="settle/1796300000.2", Val="NOANSWER//9")
        session.action("DBPut", Family="panel", Key="answer/1796300000.1", Val="1.5")
        # Another family that starts with the same letters is not in the tree.
        session.action("DBPut", Family="panelx", Key="settle/1", Val="other")
        try:
            tree = session.action_list("DBGetTree", Family="panel")
            assert {e["Key"]: e["Val"] for e in tree} == {
                "/panel/settle/1796300000.1": "ANSWER/1/31",
                "/panel/settle/1796300000.2": "NOANSWER//9",
                "/panel/answer/1796300000.1": "1.5",
            }
            assert {e["Event"] for e in tree} == {"DBGetTreeResponse"}
            settles = session.action_list("DBGetTree", Family="panel", Key="settle")
            assert len(settles) == 2
            session.action("DBDel", Family="panel", Key="settle/1796300000.1")
            assert [e["Key"] for e in session.action_list("DBGetTree", Family="panel/settle")] == [
                "/panel/settle/1796300000.2"
            ]
            with pytest.raises(ami.AmiError, match="could not be deleted"):
                session.action("DBDel", Family="panel", Key="settle/1796300000.1")
        finally:
            session.action("DBDelTree", Family="panelx")


def test_core_show_channels_lists_a_call_between_events(pbx: Pbx) -> None:
    pbx.load_dialplan("[dialin]\nexten => _X.,1,Answer()\n same => n,Wait(30)\n")
    call = pbx.call("4930900900", context="dialin")
    call.wait_for(lambda e: e.get("Event") == "Newexten" and e.get("Application") == "Wait")
    # With events on, the call's events arrive between the answers and are passed over.
    with ami.Ami(pbx.ami_url, events="on") as session:
        channels = session.action_list("CoreShowChannels")
        assert session.action("Ping")["Ping"] == "Pong"
    assert {c["Uniqueid"] for c in channels} == {call.uniqueid, call.caller_uniqueid}
    assert {c["Event"] for c in channels} == {"CoreShowChannel"}
    panel_side = next(c for c in channels if c["Uniqueid"] == call.uniqueid)
    assert panel_side["Context"] == "dialin"
    call.hangup()
    call.wait_done(10)
    with ami.Ami(pbx.ami_url) as session:
        assert session.action_list("CoreShowChannels") == []


def test_a_value_with_a_line_break_is_refused_before_sending(pbx: Pbx) -> None:
    with ami.Ami(pbx.ami_url) as session:
        for value in ("x\r\nAction: DBDelTree", "x\nFamily: other", "x\r"):
            with pytest.raises(ami.AmiError, match="line break") as failure:
                session.action("DBPut", Family="panel", Key="k", Val=value)
            assert failure.value.permanent
        with pytest.raises(ami.AmiError, match="not an AMI header name"):
            session.action("DBPut", **{"Family": "panel", "Key\r\nAction": "x"})
        assert session.action_list("DBGetTree", Family="panel") == []
        assert session.action("Ping")["Ping"] == "Pong"


# --- Broken peers --------------------------------------------------------------------------------


@pytest.fixture
def peer() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """peer(behaviour) -> port: a server that runs behaviour on its one connection."""
    listeners: list[socket.socket] = []

    def start(behaviour: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                behaviour(conn)

        threading.Thread(target=serve, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def target(port: int) -> ami.AmiTarget:
    return ami.AmiTarget(host="127.0.0.1", port=port, username="panel", secret="s")


def silent(conn: socket.socket) -> None:
    time.sleep(5)


def greets_then_silent(conn: socket.socket) -> None:
    conn.sendall(b"Asterisk Call Manager/11.0.0\r\n")
    time.sleep(5)


def endless_line(conn: socket.socket) -> None:
    conn.sendall(b"Asterisk Call Manager/11.0.0\r\n")
    chunk = b"x" * 65536
    for _ in range(1000):  # at most 64 MB, if the client kept reading
        conn.sendall(chunk)


def endless_message(conn: socket.socket) -> None:
    conn.sendall(b"Asterisk Call Manager/11.0.0\r\n")
    chunk = b"X-Header: value\r\n" * 4096
    for _ in range(1000):
        conn.sendall(chunk)


def not_ami(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    time.sleep(5)


@pytest.mark.parametrize("behaviour", [silent, greets_then_silent])
def test_a_silent_peer_times_out_and_may_be_tried_again(
    peer: Callable[[Callable[[socket.socket], None]], int],
    behaviour: Callable[[socket.socket], None],
) -> None:
    started = time.monotonic()
    with pytest.raises(ami.AmiError, match="did not answer in time") as failure:
        ami.Ami(target(peer(behaviour)), timeout=0.5).open()
    assert not failure.value.permanent
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("behaviour", "problem"),
    [
        (endless_line, "a line longer than"),
        (endless_message, "a message over"),
        (not_ami, "does not greet as Asterisk's manager"),
    ],
)
def test_a_peer_that_is_no_ami_is_cut_off(
    peer: Callable[[Callable[[socket.socket], None]], int],
    behaviour: Callable[[socket.socket], None],
    problem: str,
) -> None:
    started = time.monotonic()
    with pytest.raises(ami.AmiError, match=re.escape(problem)) as failure:
        ami.Ami(target(peer(behaviour)), timeout=5).open()
    assert failure.value.permanent
    assert time.monotonic() - started < 3


def test_a_refused_connection_may_be_tried_again() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with pytest.raises(ami.AmiError, match="cannot connect") as failure:
        ami.Ami(target(port), timeout=2).open()
    assert not failure.value.permanent


def test_the_reader_caps_what_it_holds() -> None:
    left, right = socket.socketpair()
    with left, right:
        reader = ami.MessageReader(left)
        right.sendall(b"A: b\r\n" + b"y" * (ami.MAX_LINE + 10))
        with pytest.raises(ami.AmiError, match="a line longer than"):
            reader.read_message(time.monotonic() + 2)
        assert len(reader._buffer) <= ami.MAX_LINE + 65536
