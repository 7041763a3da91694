"""The Asterisk side of FastAGI, spoken at the socket, as Asterisk 22 speaks it.

Used by ``manage.py dialin_check`` (to try a deployment without a phone), by the tests and by
the benchmark. Replies follow the recorded sessions in ../shared/asterisk-agi: one LF per
line, the environment block ends with an empty line, ``HANGUP`` at the end of every session
(and when the caller hangs up, after which channel commands get ``511``).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import socket
import time
from collections import deque
from dataclasses import dataclass, field

CHANNEL_COMMANDS = {
    "ANSWER",
    "STREAM",
    "GET",
    "SAY",
    "WAIT",
    "RECORD",
    "CONTROL",
    "EXEC",
    "CHANNEL",
}


@dataclass
class Call:
    """One simulated call: who calls, what they key in, when they hang up."""

    uniqueid: str
    caller: str
    access: str
    script: str = "authorize"
    args: list[str] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)  # one entry per GET DATA; "" is a timeout
    hangup_after_commands: int | None = None
    dtmf_delay_s: float = 0.0  # how long the caller takes over each GET DATA
    variables: dict[str, str] = field(default_factory=dict)
    transcript: list[tuple[str, str]] = field(default_factory=list)


def _env(call: Call, host: str, port: int) -> list[str]:
    lines = [
        "agi_network: yes",
        f"agi_network_script: {call.script}",
        f"agi_request: agi://{host}:{port}/{call.script}",
        f"agi_channel: PJSIP/access-{call.uniqueid}",
        "agi_language: en",
        "agi_type: PJSIP",
        f"agi_uniqueid: {call.uniqueid}",
        "agi_version: 22.10.1",
        f"agi_callerid: {call.caller}",
        "agi_calleridname: unknown",
        "agi_callingpres: 0",
        "agi_callingani2: 0",
        "agi_callington: 0",
        "agi_callingtns: 0",
        f"agi_dnid: {call.access}",
        "agi_rdnis: unknown",
        "agi_context: dialin",
        f"agi_extension: {call.access}",
        "agi_priority: 2",
        "agi_enhanced: 0.0",
        "agi_accountcode: ",
        "agi_threadid: 139810295625408",
    ]
    lines += [f"agi_arg_{n}: {value}" for n, value in enumerate(call.args, start=1)]
    return [*lines, ""]


def run(call: Call, host: str = "127.0.0.1", port: int = 4573, *, timeout: float = 30.0) -> Call:
    """Play one call against a FastAGI server; fills ``variables`` and ``transcript``."""
    digits = deque(call.dtmf)
    hung_up = False
    handled = 0
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")

        def send(line: str) -> None:
            call.transcript.append(("<<", line))
            sock.sendall((line + "\n").encode())

        # One write for the block. Asterisk writes it line by line; over TCP the server gets
        # the same bytes either way, and one write keeps the simulator's own cost (it shares
        # the CPUs with the server in the benchmark) small.
        env = _env(call, host, port)
        call.transcript.extend(("<<", line) for line in env)
        sock.sendall("".join(line + "\n" for line in env).encode())
        while True:
            raw = reader.readline()
            if not raw:
                break
            command = raw.decode().rstrip("\n")
            call.transcript.append((">>", command))
            handled += 1
            if (
                call.hangup_after_commands is not None
                and handled > call.hangup_after_commands
                and not hung_up
            ):
                hung_up = True
                send("HANGUP")
            verb = command.split(" ", 1)[0].upper()
            if (
                hung_up
                and verb in CHANNEL_COMMANDS
                and not command.upper().startswith("GET VARIABLE")
            ):
                send("511 Command Not Permitted on a dead channel or intercept routine")
                continue
            if call.dtmf_delay_s and verb == "GET" and command.upper().startswith("GET DATA"):
                time.sleep(call.dtmf_delay_s)
            send(_reply(command, call, digits))
        with contextlib.suppress(OSError):
            send("HANGUP")  # Asterisk's last word, even when the script ended the session
    return call


def _reply(command: str, call: Call, digits: deque[str]) -> str:
    try:
        words = shlex.split(command) if '"' in command or "'" in command else command.split()
    except ValueError:
        return "520 Invalid command syntax.  Proper usage not available."
    upper = [w.upper() for w in words]
    if upper[:1] == ["ANSWER"]:
        return "200 result=0"
    if upper[:1] == ["VERBOSE"]:
        return "200 result=1"
    if upper[:2] == ["STREAM", "FILE"]:
        return "200 result=0 endpos=8000"
    if upper[:2] == ["GET", "DATA"]:
        keyed = digits.popleft() if digits else ""
        return f"200 result={keyed}" if keyed else "200 result= (timeout)"
    if upper[:2] == ["SET", "VARIABLE"] and len(words) == 4:
        call.variables[words[2]] = words[3]
        return "200 result=1"
    if upper[:2] == ["GET", "VARIABLE"] and len(words) == 3:
        value = call.variables.get(words[2])
        return f"200 result=1 ({value})" if value is not None else "200 result=0"
    if upper[:2] == ["CHANNEL", "STATUS"]:
        return "200 result=6"
    if upper[:2] == ["EXEC", "MSET"] and len(words) == 3:
        # MSet(name=value,...): split on commas, then on the first '=', quotes stripped.
        for pair in words[2].split(","):
            name, _, value = pair.partition("=")
            call.variables[name.strip()] = value.strip().strip('"')
        return "200 result=0"
    if upper[:1] == ["EXEC"]:
        return "200 result=0"
    if re.match(r"^(SET VARIABLE|GET VARIABLE)", command.upper()):
        return (
            "520-Invalid command syntax.  Proper usage follows:\n"
            "Sets a variable to the current channel.\n"
            "520 End of proper usage."
        )
    return "510 Invalid or unknown command"
