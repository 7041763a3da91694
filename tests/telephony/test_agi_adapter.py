"""telephony/agi.py against real Asterisk 22 sessions, byte for byte (tests/telephony/transcripts).

A thread plays Asterisk from a recorded transcript over a socket pair: it sends exactly the
recorded bytes, and checks that our side sends exactly the recorded commands.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from telephony.agi import AgiError, ChannelGone, Session

HERE = Path(__file__).parent / "transcripts"
SCENARIOS = ["minimal", "dialin", "hangup-stream", "hangup-idle", "hangup-dial", "dial-first"]


def steps(name: str) -> list[tuple[str, str]]:
    """(direction, line) for every wire line of a transcript; notes and EOF left out."""
    out = []
    for raw in (HERE / f"{name}.txt").read_text().splitlines():
        if not raw.startswith("+"):
            continue
        _time, rest = raw.split("s  ", 1)
        direction, content = rest[:2], rest[4:]
        if direction in ("<<", ">>") and not content.startswith("[EOF"):
            out.append((direction, content))
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_transcript_text_is_the_raw_bytes(name):
    sent = "".join(line + "\n" for direction, line in steps(name) if direction == "<<")
    assert sent.encode() == (HERE / f"{name}.raw").read_bytes()


def replay(name: str) -> tuple[Session, list[object], list[str]]:
    """Run our side through the transcript's commands; return the session and each outcome."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    theirs.settimeout(5)
    script = steps(name)
    mismatches: list[str] = []

    def asterisk() -> None:
        reader = theirs.makefile("rb")
        for direction, line in script:
            if direction == "<<":
                theirs.sendall(line.encode() + b"\n")
            else:
                got = reader.readline().decode().rstrip("\n")
                if got != line:
                    mismatches.append(f"expected {line!r}, got {got!r}")
        theirs.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=asterisk, daemon=True)
    thread.start()
    session = Session(ours.makefile("rb"), ours.makefile("wb"))
    outcomes: list[object] = []
    for direction, line in script:
        if direction != ">>":
            continue
        try:
            session.send_command(line)
            outcomes.append(session.get_result())
        except AgiError as exc:
            outcomes.append(exc)
    thread.join(5)
    ours.close()
    theirs.close()
    return session, outcomes, mismatches


def test_minimal():
    session, outcomes, mismatches = replay("minimal")
    assert not mismatches
    assert session.env["agi_network_script"] == "minimal?final=1"
    assert outcomes[1]["result"] == ("1", "+4930123456")  # type: ignore[index]


def test_dialin_codes_510_520_and_dial_minus_one():
    session, outcomes, mismatches = replay("dialin")
    assert not mismatches
    assert session.env["agi_arg_2"] == "+4930123456"
    by_command: dict[str, object] = {}
    for line, outcome in zip([x for d, x in steps("dialin") if d == ">>"], outcomes, strict=True):
        by_command.setdefault(line, outcome)  # the first time each command was sent
    assert by_command["GET VARIABLE DOES_NOT_EXIST"]["result"] == ("0", "")  # type: ignore[index]
    assert by_command['STREAM FILE does-not-exist ""']["result"] == ("-1", "")  # type: ignore[index]
    unknown = by_command["NO SUCH COMMAND"]
    assert isinstance(unknown, AgiError)
    assert unknown.permanent
    usage = by_command["SET VARIABLE"]
    assert isinstance(usage, AgiError)
    assert "End of proper usage" in str(usage)
    # Dial answers -1 after a normal answered call when the callee hangs up: not an error.
    assert by_command['EXEC Dial "Local/3@sink,10"']["result"] == ("-1", "")  # type: ignore[index]
    assert by_command["GET VARIABLE ANSWEREDTIME_MS"]["result"] == ("1", "6048")  # type: ignore[index]
    assert session.hung_up  # TIMEOUT(absolute) ended the call at the end of the session


def test_hangup_between_command_and_reply_keeps_replies_in_step():
    session, outcomes, mismatches = replay("hangup-dial")
    assert not mismatches
    commands = [line for d, line in steps("hangup-dial") if d == ">>"]
    by_command = dict(zip(commands, outcomes, strict=True))
    assert by_command["GET VARIABLE DIALSTATUS"]["result"] == ("1", "ANSWER")  # type: ignore[index]
    assert by_command["GET VARIABLE ANSWEREDTIME"]["result"] == ("1", "4")  # type: ignore[index]
    assert session.hung_up


def test_unsolicited_hangup_then_511_on_channel_commands():
    session, outcomes, mismatches = replay("hangup-idle")
    assert not mismatches
    assert outcomes[1]["result"] == ("1", "0301111111")  # type: ignore[index]
    assert isinstance(outcomes[2], ChannelGone)
    assert session.hung_up


def test_hangup_during_a_prompt():
    _session, outcomes, mismatches = replay("hangup-stream")
    assert not mismatches
    assert outcomes[1]["result"] == ("-1", "")  # type: ignore[index]
    assert outcomes[1]["endpos"] == ("20000", "")  # type: ignore[index]
    assert outcomes[2]["result"] == ("1", "0301111111")  # type: ignore[index]  # GET VARIABLE still works
    assert all(isinstance(o, ChannelGone) for o in outcomes[3:6])
    assert outcomes[6]["result"] == ("0", "")  # type: ignore[index]


def test_dial_with_g_returns_zero():
    _session, outcomes, mismatches = replay("dial-first")
    assert not mismatches
    assert outcomes[0]["result"] == ("4", "")  # type: ignore[index]
    assert outcomes[-2]["result"] == ("0", "")  # type: ignore[index]


def test_pyst2_would_have_broken_here():
    """The reasons for the adapter, shown on pyst2 itself."""
    import io

    from asterisk import agi

    plain = agi.AGI.__new__(agi.AGI)
    plain.stdin = io.StringIO("HANGUP\n200 result=1 (ANSWER)\n")
    plain.stderr = io.StringIO()
    with pytest.raises(Exception):  # noqa: B017,PT011
        plain.get_result()  # takes HANGUP for the reply
    plain.stdin = io.StringIO("200 result=-1\n")
    with pytest.raises(agi.AGIAppError):
        plain.get_result()
    plain.stdin = io.StringIO("511 Command Not Permitted on a dead channel or intercept routine\n")
    with pytest.raises(agi.AGIUnknownError):
        plain.get_result()
