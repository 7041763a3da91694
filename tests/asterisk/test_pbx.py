"""The harness itself: the build's source checks, and a real Asterisk with simulated calls.

The calls go through a tiny FastAGI stub written here (env block, GET DATA twice, SET
VARIABLE), so that these tests prove the harness, not the panel.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.asterisk import build
from tests.asterisk.pbx import Call, Pbx, event_time

DID = "+4930900900"
CALLER = "+4915112345678"

# --- The build's sources -----------------------------------------------------------------------


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over a directory: (directory, base URL)."""
    root = tmp_path / "site"
    root.mkdir()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Files, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_default_download_is_https() -> None:
    assert build.URL.startswith("https://downloads.asterisk.org/")
    assert build.URL.endswith(f"/asterisk-{build.VERSION}.tar.gz")


def test_a_given_source_with_another_checksum_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / build.TARBALL
    tarball.write_bytes(b"not asterisk")
    with pytest.raises(build.BuildError, match=r"is not Asterisk 22\.10\.1"):
        build.find_source(environ={"ASTERISK_SOURCE": str(tarball)})


def test_no_source_anywhere_fails_and_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError) as failure:
        build.find_source(
            environ={},
            candidates=[tmp_path / "shared" / build.TARBALL],
            cache_dir=tmp_path / "cache",
            url=f"http://127.0.0.1:{closed_port()}/{build.TARBALL}",
            timeout=5,
        )
    assert "ASTERISK_SOURCE=" in str(failure.value)
    assert "download failed" in str(failure.value)


def test_a_published_checksum_other_than_the_pinned_one_is_refused(
    tmp_path: Path, http_dir: tuple[Path, str]
) -> None:
    root, base = http_dir
    (root / build.TARBALL).write_bytes(b"another release")
    (root / f"{build.TARBALL}.sha256").write_text(
        f"{hashlib.sha256(b'another release').hexdigest()}  {build.TARBALL}\n"
    )
    with pytest.raises(build.BuildError, match="refusing to build it"):
        build.download(f"{base}/{build.TARBALL}", tmp_path / "cache" / build.TARBALL)
    assert not (tmp_path / "cache" / build.TARBALL).exists()


def test_a_download_that_does_not_match_its_checksum_leaves_nothing(
    tmp_path: Path, http_dir: tuple[Path, str]
) -> None:
    root, base = http_dir
    (root / build.TARBALL).write_bytes(b"truncated")
    (root / f"{build.TARBALL}.sha256").write_text(f"{build.SHA256}  {build.TARBALL}\n")
    cache = tmp_path / "cache"
    with pytest.raises(build.BuildError, match="has SHA-256"):
        build.find_source(environ={}, candidates=[], cache_dir=cache, url=f"{base}/{build.TARBALL}")
    assert list(cache.iterdir()) == []


def test_a_good_download_is_cached_and_used_next_time(
    tmp_path: Path, http_dir: tuple[Path, str]
) -> None:
    # The real release, served from loopback: from wherever this machine's build took it.
    source = build.find_source()
    root, base = http_dir
    shutil.copyfile(source, root / build.TARBALL)
    (root / f"{build.TARBALL}.sha256").write_text(f"{build.SHA256}  {build.TARBALL}\n")
    cache = tmp_path / "cache"
    found = build.find_source(
        environ={}, candidates=[], cache_dir=cache, url=f"{base}/{build.TARBALL}"
    )
    assert found == cache / build.TARBALL
    assert build.sha256_of(found) == build.SHA256
    # The cached copy is used without asking the server again.
    again = build.find_source(
        environ={},
        candidates=[],
        cache_dir=cache,
        url=f"http://127.0.0.1:{closed_port()}/{build.TARBALL}",
    )
    assert again == found


# --- A FastAGI stub ----------------------------------------------------------------------------

SCRIPTS = {
    # What the panel's authorize does at most: two prompts with digits, then the decision.
    "authorize": [
        "GET DATA custom/enter-pin 3000 8",
        "GET DATA custom/enter-number 3000 20",
        "SET VARIABLE AUTH_RESULT OK",
    ],
    "open": ["SET VARIABLE AUTH_RESULT OK"],
    "settle": ["SET VARIABLE SETTLED OK"],
}


@dataclass
class AgiSession:
    env: dict[str, str]
    replies: list[str]


class AgiStub:
    """A FastAGI server on loopback that runs SCRIPTS[path] and records each session."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = int(self.sock.getsockname()[1])
        self.sessions: list[AgiSession] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, conn.makefile("rwb") as wire:
            env: dict[str, str] = {}
            while line := wire.readline().decode().rstrip("\n"):
                key, _, value = line.partition(": ")
                env[key] = value
            replies: list[str] = []
            for command in SCRIPTS.get(env.get("agi_network_script", ""), []):
                wire.write(f"{command}\n".encode())
                wire.flush()
                reply = wire.readline().decode().rstrip("\n")
                # HANGUP is unsolicited: the reply follows it.
                while reply == "HANGUP":
                    replies.append(reply)
                    reply = wire.readline().decode().rstrip("\n")
                replies.append(reply)
                if not reply:
                    break
        with self.lock:
            self.sessions.append(AgiSession(env, replies))

    def session(self, script: str, uniqueid: str) -> AgiSession:
        """The finished session of that script on that channel."""
        with self.lock:
            found = [
                s
                for s in self.sessions
                if s.env.get("agi_network_script") == script
                and s.env.get("agi_uniqueid") == uniqueid
            ]
        assert len(found) == 1, f"{script} sessions of {uniqueid}: {found} (all: {self.sessions})"
        return found[0]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def agi() -> Iterator[AgiStub]:
    stub = AgiStub()
    yield stub
    stub.close()


def dialplan(agi_port: int) -> str:
    """A small stand-in for the panel's dialplan, steered by the call's variables."""
    agi = f"agi://127.0.0.1:{agi_port}"
    return f"""
[dialin]
exten => {DID},1,Set(WHICH=plus)
 same => n,Goto(test-call,s,1)
exten => {DID[1:]},1,Set(WHICH=plain)
 same => n,Goto(test-call,s,1)

[test-call]
exten => s,1,Set(CHANNEL(hangup_handler_push)=test-hangup,s,1)
 same => n,Answer()
 same => n,Set(FLOW=${{IF($["${{FLOW}}" = ""]?authorize:${{FLOW}})}})
 same => n,AGI({agi}/${{FLOW}},${{CALLERID(dnid)}},${{CALLERID(num)}})
 same => n,GotoIf($["${{AUTH_RESULT}}" != "OK" | "${{TARGET}}" = ""]?end)
 same => n,Set(RING=${{IF($["${{RING}}" = ""]?5:${{RING}})}})
 same => n,Set(LIMIT_MS=${{IF($["${{LIMIT_MS}}" = ""]?600000:${{LIMIT_MS}})}})
 same => n,Set(OPTIONS=iL(${{LIMIT_MS}})U(test-answered^${{UNIQUEID}}))
 same => n,Dial(Local/4930123456@${{TARGET}}/n,${{RING}},${{OPTIONS}})
 same => n(end),Playback(custom/goodbye)
 same => n,Hangup()

[test-answered]
exten => s,1,Set(DB(panel/answer/${{ARG1}})=${{EPOCH}})
 same => n,Return()

[test-hangup]
exten => s,1,AGI({agi}/settle,${{DIALSTATUS}})
 same => n,Return()
"""


@pytest.fixture
def stub_pbx(pbx: Pbx, agi: AgiStub) -> Pbx:
    pbx.load_dialplan(dialplan(agi.port))
    return pbx


# --- Calls --------------------------------------------------------------------------------------


def test_the_caller_keys_digits_into_both_get_datas(stub_pbx: Pbx, agi: AgiStub) -> None:
    call = stub_pbx.call(DID, caller_id=CALLER, digits=["1234", "4930123"])
    # A PIN as long as GET DATA's maximum ends the prompt by itself: no # after it.
    full = stub_pbx.call(DID, digits=["12345678", "004930123456789"])
    call.wait_done(20)
    full.wait_done(20)
    assert agi.session("authorize", full.uniqueid).replies[:2] == [
        "200 result=12345678",
        "200 result=004930123456789",
    ]
    assert full.digits_sent == ["12345678", "004930123456789#"]
    session = agi.session("authorize", call.uniqueid)
    assert session.replies == ["200 result=1234", "200 result=4930123", "200 result=1"]
    assert session.env["agi_dnid"] == DID
    assert session.env["agi_callerid"] == CALLER
    assert session.env["agi_arg_1"] == DID
    assert call.variable("AUTH_RESULT") == "OK", call.describe()
    assert call.agi_commands()[:3] == SCRIPTS["authorize"]
    assert call.prompts_seen == ["custom/enter-pin", "custom/enter-number"]
    assert call.digits_sent == ["1234#", "4930123#"]
    # The silent prompts exist and play.
    assert call.played("custom/goodbye")
    assert call.played("enter-pin")
    assert not call.played("no-credit")
    assert call.variable("PLAYBACKSTATUS") == "SUCCESS", stub_pbx.log()
    # Nothing dialled: the settle handler says so.
    assert agi.session("settle", call.uniqueid).replies == ["200 result=1"]
    assert call.variable("SETTLED") == "OK"


def test_the_callee_contexts_give_each_dial_status_at_once(stub_pbx: Pbx, agi: AgiStub) -> None:
    expected = {
        "ANSWER": {"TARGET": "sim-answer"},
        "NOANSWER": {"TARGET": "sim-ring", "RING": "1"},
        "BUSY": {"TARGET": "sim-busy"},
        "CONGESTION": {"TARGET": "sim-congested"},
        "CHANUNAVAIL": {"TARGET": "sim-unavailable"},
    }
    started = time.monotonic()
    mark = stub_pbx.log_mark()
    calls = {
        status: stub_pbx.call(DID, variables={"FLOW": "open", **variables}, hold=0.5)
        for status, variables in expected.items()
    }
    # A ringing callee can also give up by itself (a carrier's no-answer timeout).
    gave_up = stub_pbx.call(
        DID, variables={"FLOW": "open", "TARGET": "sim-ring", "RING": "30"}, give_up_after=0.5
    )
    for call in [*calls.values(), gave_up]:
        call.wait_done(20)
    for status, call in calls.items():
        assert call.variable("DIALSTATUS") == status, call.describe()
        assert call.dial_statuses() == [status]
        assert agi.session("settle", call.uniqueid).env["agi_arg_1"] == status
    assert gave_up.variable("DIALSTATUS") == "NOANSWER", gave_up.describe()
    # Six calls at once took about as long as the slowest one.
    assert time.monotonic() - started < 10
    assert stub_pbx.channels() == []
    assert "ERROR[" not in stub_pbx.log_since(mark)


def test_dial_l_cuts_the_call_at_its_limit(stub_pbx: Pbx, agi: AgiStub) -> None:
    call = stub_pbx.call(
        DID, variables={"FLOW": "open", "TARGET": "sim-answer", "LIMIT_MS": "1500"}, hold=30
    )
    call.wait_done(20)
    answered = call.wait_answered(0)
    callee = next(
        e
        for e in call.events
        if e.get("Event") == "Hangup"
        and e.get("Uniqueid") not in (call.uniqueid, call.caller_uniqueid)
    )
    connected = event_time(callee) - event_time(answered)
    assert 1.3 < connected < 3.0, call.describe()
    assert call.variable("DIALSTATUS") == "ANSWER"
    assert not call.hung_up_by_caller


def test_a_hangup_handler_runs_its_agi_after_the_caller_hung_up(
    stub_pbx: Pbx, agi: AgiStub
) -> None:
    talking = stub_pbx.call(
        DID,
        variables={"FLOW": "open", "TARGET": "sim-answer"},
        hold=30,
        hangup_after_answer=0.5,
    )
    at_pin = stub_pbx.call(DID, hangup_at="enter-pin")
    talking.wait_done(20)
    at_pin.wait_done(20)

    assert talking.hung_up_by_caller
    assert talking.hangup_cause(talking.caller_uniqueid) == 16
    settle = agi.session("settle", talking.uniqueid)
    assert settle.env["agi_arg_1"] == "ANSWER"
    assert settle.replies == ["200 result=1"]
    assert talking.variable("SETTLED") == "OK"
    # Dial's U() ran on the callee's answer and wrote to AstDB.
    assert f"/panel/answer/{talking.uniqueid}" in stub_pbx.db_tree("panel")

    # Hung up at the first prompt: GET DATA answers -1, then HANGUP comes, channel commands
    # are refused with 511 (variables can still be set), and the handler still settles.
    assert at_pin.prompts_seen[0] == "custom/enter-pin"
    assert at_pin.digits_sent == []
    replies = agi.session("authorize", at_pin.uniqueid).replies
    assert replies[:2] == ["200 result=-1", "HANGUP"], replies
    assert replies[2].startswith("511 "), replies
    assert replies[3] == "200 result=1", replies
    assert agi.session("settle", at_pin.uniqueid).replies == ["200 result=1"]
    assert at_pin.dial_statuses() == []


def test_plus_and_plain_dids_reach_their_extensions(stub_pbx: Pbx, agi: AgiStub) -> None:
    plus = stub_pbx.call(DID, variables={"FLOW": "open"})
    plain = stub_pbx.call(DID[1:], variables={"FLOW": "open"})
    for call, which, dnid in ((plus, "plus", DID), (plain, "plain", DID[1:])):
        call.wait_done(20)
        assert call.variable("WHICH") == which, call.describe()
        assert agi.session("open", call.uniqueid).env["agi_dnid"] == dnid


def test_a_did_with_no_extension_ends_the_call(stub_pbx: Pbx) -> None:
    call = stub_pbx.call("4930999999").wait_done(10)
    assert call.originate_response is not None
    assert call.originate_response["Response"] == "Failure"
    assert call.agi_commands() == []
    assert "4930999999" in stub_pbx.log()


def test_calls_in_a_row_do_not_mix(stub_pbx: Pbx, agi: AgiStub) -> None:
    calls: list[Call] = []
    for n in range(3):
        calls.append(stub_pbx.call(DID, caller_id=f"+49151000000{n}", variables={"FLOW": "open"}))
    for n, call in enumerate(calls):
        call.wait_done(20)
        env = agi.session("open", call.uniqueid).env
        assert env["agi_callerid"] == f"+49151000000{n}"
        assert {e.get("Linkedid") for e in call.events if "Linkedid" in e} == {call.caller_uniqueid}


def test_strftime_epoch_is_right_though_django_sets_tz(pbx: Pbx) -> None:
    pbx.load_dialplan(
        "[dialin]\n"
        "exten => _X.,1,Set(STAMP=${STRFTIME(,,%s.%3q)})\n"
        " same => n,Set(NOW=${EPOCH})\n"
        " same => n,Hangup()\n"
    )
    call = pbx.call(DID[1:], context="dialin").wait_done(10)
    stamp, now = call.variable("STAMP"), call.variable("NOW")
    assert stamp
    assert now
    assert abs(float(stamp) - int(now)) < 2, (stamp, now, os.environ.get("TZ"))


# --- The process ---------------------------------------------------------------------------------


def test_only_the_loopback_manager_port_listens(pbx: Pbx) -> None:
    assert pbx.listening() == [("127.0.0.1", pbx.ami_port)]


def test_every_module_runs_and_the_boot_logs_no_problem(pbx: Pbx) -> None:
    shown = pbx.cli("module show")
    for module in build.MODULES:
        assert re.search(rf"^{module}\.so .* Running ", shown, flags=re.MULTILINE), shown
    log = (pbx.logdir / "full").read_text()
    boot = log[: log.index("Asterisk Ready.")]
    assert not re.search(r"\] (ERROR|WARNING)\[", boot), boot


def test_astdb_survives_a_crash_and_a_restart(fresh_pbx: Pbx) -> None:
    fresh_pbx.db_put("panel", "settle/1796300000.1", "ANSWER/1796300001.5/1796300031.0")
    fresh_pbx.cli("database put panel answer/1796300000.1 1796300001.5")
    # AstDB commits from a background thread, at most once a second.
    deadline = time.monotonic() + 5
    while len(fresh_pbx.db_committed("panel")) < 2:
        assert time.monotonic() < deadline, fresh_pbx.db_committed("panel")
        time.sleep(0.1)
    pid = fresh_pbx.process.pid if fresh_pbx.process else 0
    fresh_pbx.kill()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    fresh_pbx.restart()
    assert fresh_pbx.db_tree("panel") == {
        "/panel/settle/1796300000.1": "ANSWER/1796300001.5/1796300031.0",
        "/panel/answer/1796300000.1": "1796300001.5",
    }
    assert fresh_pbx.db_get("panel", "settle/1796300000.1") == "ANSWER/1796300001.5/1796300031.0"
    assert fresh_pbx.db_get("panel", "missing") is None
    # A clean stop keeps it too.
    fresh_pbx.stop()
    fresh_pbx.restart()
    assert len(fresh_pbx.db_tree("panel")) == 2


def test_load_dialplan_replaces_the_panel_dialplan(pbx: Pbx) -> None:
    pbx.load_dialplan("[panel-one]\nexten => s,1,NoOp(one)\n")
    pbx.load_dialplan("[panel-two]\nexten => s,1,NoOp(two)\n")
    assert "There is no existence of 'panel-one'" in pbx.cli("dialplan show panel-one")
    assert "NoOp(two)" in pbx.cli("dialplan show panel-two")
