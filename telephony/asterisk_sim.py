"""The Asterisk side of FastAGI, spoken at the socket, as Asterisk 22 speaks it.

Used by ``manage.py dialin_check`` (to try a deployment without a phone), by the tests and by
the benchmarks. Replies follow the recorded sessions in ../shared/asterisk-agi: one LF per
line, the environment block ends with an empty line, ``HANGUP`` at the end of every session
(and when the caller hangs up, after which channel commands get ``511``).

Around the sessions, ``Dialplan`` does what the panel's dialplan
(templates/telephony/asterisk/extensions_panel.conf) does with them: several servers tried in
turn, the hangup written to Asterisk's database (AstDB) before it is sent, and ``AmiServer``
is the part of Asterisk's manager interface (AMI) through which the panel's reconciliation
reads that database and the live channels. The real Asterisk runs in the end-to-end tests
(tests/asterisk); this is for what needs hundreds of calls a second, or servers killed at
will, in one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import secrets
import shlex
import socket
import socketserver
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

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
    # Dialplan applications run outside the AGI sessions (Dialplan: the try-later prompt).
    applications: list[str] = field(default_factory=list)


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


# The panel's dialplan ----------------------------------------------------------------------


@dataclass
class Channel:
    """A caller's channel while it is up: what CoreShowChannels lists for it."""

    call: Call
    created: float = field(default_factory=time.time)
    application: str = "AGI"
    data: str = ""


class Dialplan:
    """What extensions_panel.conf does around the FastAGI sessions, for simulated calls.

    ``authorize`` is panel-call up to Dial: the servers in turn from a random one (or
    ``first``), each an AGI() of its own on the same channel, so that the variables a server
    set stay set. Asterisk goes to the next server when the connection is refused (server
    down or draining), reset (killed mid-session) or closed without AUTH_RESULT (its
    sessions were all taken); it reports AGISTATUS=SUCCESS for the last, so the dialplan
    looks at AUTH_RESULT, not at AGISTATUS. No server decided: Playback(custom/try-later).

    ``answered`` is the panel-answered routine Dial's U() runs when the callee answers: the
    answer time kept on the caller's channel, and in AstDB as ``answer/UNIQUEID`` =
    ``EPOCH/TRY`` (for a call cut by an Asterisk crash). ``hangup`` is the panel-hangup
    handler: ``settle/UNIQUEID`` = ``STATUS/ANSWER/END/TRY/TOKEN`` written to AstDB first,
    then two rounds over the servers from the one that authorized; SETTLED=OK deletes both
    entries. An entry no server took stays for the reconciliation, which reads it through
    ``AmiServer``. ``drop`` is a channel gone without its hangup handler (Asterisk killed).

    The AstDB here is a dict of full keys (``/panel/settle/UNIQUEID``, as AMI's DBGetTree
    names them); ``channels`` holds the callers' channels that are up, by uniqueid. Both
    are shared with an AmiServer and with the threads that play calls: every change is one
    dict operation, atomic in CPython, and readers copy before they iterate.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        *,
        node: str = "sim",
        astdb: dict[str, str] | None = None,
        timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if not servers:
            raise ValueError("the dialplan needs at least one FastAGI server")
        self.servers = list(servers)
        self.node = node
        self.astdb: dict[str, str] = {} if astdb is None else astdb
        self.channels: dict[str, Channel] = {}
        self.timeout = timeout
        self.rng = rng or random.Random()  # noqa: S311  (load spreading, not secrecy)

    @property
    def settle_attempts(self) -> int:
        """As asterisk_dialplan writes it: each server twice."""
        return 2 * len(self.servers)

    def _agi(self, call: Call, index: int) -> None:
        """One AGI() to server ``index`` (0-based); a connection that fails ends it, as in
        Asterisk, where AGI() then returns with AGISTATUS=FAILURE and the dialplan goes on."""
        host, port = self.servers[index]
        with contextlib.suppress(OSError):
            run(call, host, port, timeout=self.timeout)

    def authorize(self, call: Call, *, first: int | None = None) -> Call:
        """panel-call up to Dial; AUTH_RESULT in ``call.variables`` says what was decided.

        ``call.args`` default to the dialplan's: access number, caller ID, node name.
        A call not authorized (refused, or no server decided) is hung up at once, as the
        dialplan's Return() and Hangup() do; an authorized one stays up until ``hangup``.
        """
        if not call.args:
            call.args = [call.access, call.caller, self.node]
        count = len(self.servers)
        variables = call.variables
        channel = Channel(call)
        self.channels[call.uniqueid] = channel
        start = self.rng.randrange(count) if first is None else first % count
        variables["PANEL_SERVERS"] = "&".join(f"{h}:{p}" for h, p in self.servers)
        variables["PANEL_SERVER_COUNT"] = str(count)
        variables["PANEL_FIRST"] = str(start + 1)  # RAND(1,n): 1-based, as CUT() counts
        for attempt in range(count):
            index = (start + attempt) % count
            variables["PANEL_ATTEMPT"] = str(attempt)
            variables["PANEL_INDEX"] = str(index + 1)
            self._agi(call, index)
            if variables.get("AUTH_RESULT"):
                break
        else:
            # No server could decide: the caller hears why instead of silence.
            call.applications.append("Playback(custom/try-later)")
        if variables.get("AUTH_RESULT") != "OK":
            # Return(), Hangup(): the hangup handler finds no AUTH_RESULT=OK and does nothing.
            self.channels.pop(call.uniqueid, None)
            return call
        channel.application = "Dial"
        channel.data = variables.get("DIAL_STRING_1", "")
        return call

    def answered(self, call: Call, *, at: float | None = None, route: int = 1) -> None:
        """Dial's U(panel-answered): the callee answered (``at``, epoch seconds) on trunk
        ``route``. The caller's channel keeps the time with milliseconds (SHARED), AstDB
        the whole second (${EPOCH}) and the trunk."""
        at = time.time() if at is None else at
        call.variables["PANEL_ANSWER_TS"] = f"{at:.3f}"
        self.astdb[f"/panel/answer/{call.uniqueid}"] = f"{int(at)}/{route}"

    def hangup(
        self, call: Call, *, status: str = "ANSWER", ended: float | None = None, route: int = 1
    ) -> bool:
        """The caller's hangup handler after Dial ended with ``status`` on trunk ``route``;
        whether a server settled the call (False: the settle waits in AstDB, or there was
        nothing to settle). The channel is gone once it returns."""
        variables = call.variables
        variables["DIALSTATUS"] = status
        variables["TRY"] = str(route)
        try:
            if variables.get("AUTH_RESULT") != "OK":
                return False
            end = f"{time.time() if ended is None else ended:.3f}"
            answer = variables.get("PANEL_ANSWER_TS", "")
            token = variables.get("SETTLE_TOKEN", "")
            variables["PANEL_END"] = end
            key = f"/panel/settle/{call.uniqueid}"
            # Written before any server is asked: a settle lost on the way is still here.
            self.astdb[key] = f"{status}/{answer}/{end}/{route}/{token}"
            settle = Call(
                uniqueid=call.uniqueid,
                caller=call.caller,
                access=call.access,
                script="settle",
                args=[status, answer, end, str(route), token],
                # The same channel: SETTLED lands among the call's variables.
                variables=variables,
                transcript=call.transcript,
            )
            count = len(self.servers)
            start = int(variables.get("PANEL_FIRST", "1")) - 1
            for attempt in range(self.settle_attempts):
                variables["PANEL_ATTEMPT"] = str(attempt)
                variables["PANEL_INDEX"] = str((start + attempt) % count + 1)
                self._agi(settle, (start + attempt) % count)
                if variables.get("SETTLED") == "OK":
                    self.astdb.pop(key, None)
                    self.astdb.pop(f"/panel/answer/{call.uniqueid}", None)
                    return True
            return False
        finally:
            self.channels.pop(call.uniqueid, None)

    def drop(self, call: Call) -> None:
        """The channel is gone without running its hangup handler (Asterisk killed or
        restarted): nothing is settled, and AstDB keeps what it had (it is on disk)."""
        self.channels.pop(call.uniqueid, None)


# The manager interface ---------------------------------------------------------------------

AMI_VERSION = "11.0.0"  # what Asterisk 22 prints in its greeting
# Asterisk reads at most this much of an inbound line and drops the rest of a longer one.
AMI_LINE = 1024


class AmiServer:
    """The part of Asterisk's manager interface the panel uses, on a loopback port.

    Greets with ``Asterisk Call Manager/11.0.0``; ``Challenge`` (AuthType MD5) then
    ``Login`` with ``Key`` = md5(challenge + secret), as Asterisk checks it (a plain
    ``Secret`` is accepted too, as Asterisk does); a failed login is answered and the
    connection closed; before a login every other action is "Permission denied".
    ``CoreShowChannels`` lists ``channels`` (one CoreShowChannel event each, then
    CoreShowChannelsComplete); ``DBGetTree``, ``DBPut`` and ``DBDel`` work on ``astdb``
    (full keys ``/family/key``, a tree is the keys under ``/Family/Key``, sorted), with
    Asterisk's messages; ``CoreStatus``; ``Logoff`` says goodbye and closes. Every other
    action gets ``Response: Error``, as an Asterisk without it would answer. Responses carry
    the action's ActionID and come in Asterisk's header order; no events are sent.

    ``astdb`` and ``channels`` are those of a ``Dialplan`` (shared, not copied), so what the
    simulated calls leave behind is what the reconciliation finds. ``actions`` records the
    actions received, by name, for tests.
    """

    def __init__(
        self,
        astdb: dict[str, str],
        channels: Mapping[str, Channel] | None = None,
        *,
        username: str = "panel",
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.astdb = astdb
        self.channels: Mapping[str, Channel] = {} if channels is None else channels
        self.username = username
        self.secret = secret or secrets.token_hex(12)
        self.actions: list[str] = []
        self.started = time.localtime()
        self._tcp = _AmiTcp((host, port), _AmiHandler)
        self._tcp.ami = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._tcp.server_address[1])

    @property
    def url(self) -> str:
        """Where telephony.ami.Ami logs in: ami://USER:SECRET@127.0.0.1:PORT."""
        host = str(self._tcp.server_address[0])
        secret = urllib.parse.quote(self.secret, safe="")
        return f"ami://{self.username}:{secret}@{host}:{self.port}"

    def start(self) -> AmiServer:
        self._thread = threading.Thread(
            target=self._tcp.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="ami-sim",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._tcp.shutdown()
            self._thread.join(5)
            self._thread = None
        self._tcp.server_close()

    def __enter__(self) -> AmiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # One method per action; each returns the bytes to send and whether the session goes on.

    def act(self, session: dict[str, Any], message: list[tuple[str, str]]) -> tuple[bytes, bool]:
        """Answer one action message (its headers in order) of a manager session."""
        headers: dict[str, str] = {}
        for key, value in message:
            # astman_get_header: the first header of that name counts, names in any case.
            headers.setdefault(key.lower(), value)
        name = headers.get("action", "")
        action_id = headers.get("actionid", "")
        if not name:
            return _ami_response(action_id, "Error", "Missing action in request"), True
        self.actions.append(name)
        verb = name.lower()
        if not session["authenticated"] and verb not in ("login", "logoff", "challenge"):
            return _ami_response(action_id, "Error", "Permission denied"), True
        handler = getattr(self, f"_action_{verb}", None)
        if handler is None:
            message_text = (
                f"Invalid/unknown command: {name}. "
                "Use Action: ListCommands to show available commands."
            )
            return _ami_response(action_id, "Error", message_text), True
        return handler(session, headers, action_id)

    def _action_challenge(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        if headers.get("authtype", "").lower() != "md5":
            return _ami_response(action_id, "Error", "Must specify AuthType"), True
        if not session["challenge"]:
            # Asterisk's is ast_random() printed as a number, fresh per session.
            session["challenge"] = str(secrets.randbelow(2**31))
        return _ami_response(
            action_id, "Success", fields=[("Challenge", session["challenge"])]
        ), True

    def _action_login(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        if session["authenticated"]:
            return _ami_response(action_id, "Success", "Already authenticated"), True
        key = headers.get("key", "")
        expected = hashlib.md5(
            (session["challenge"] + self.secret).encode(), usedforsecurity=False
        ).hexdigest()
        by_key = (
            headers.get("authtype", "").lower() == "md5"
            and bool(session["challenge"])
            and bool(key)
            and secrets.compare_digest(key, expected)
        )
        by_secret = secrets.compare_digest(headers.get("secret", ""), self.secret)
        if headers.get("username", "") != self.username or not (by_key or by_secret):
            # Asterisk waits a second first (against guessing); the simulator does not.
            return _ami_response(action_id, "Error", "Authentication failed"), False
        session["authenticated"] = True
        return _ami_response(action_id, "Success", "Authentication accepted"), True

    def _action_logoff(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        return _ami_response(action_id, "Goodbye", "Thanks for all the fish."), False

    def _action_corestatus(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        fields = [
            ("CoreStartupDate", time.strftime("%Y-%m-%d", self.started)),
            ("CoreStartupTime", time.strftime("%H:%M:%S", self.started)),
            ("CoreReloadDate", time.strftime("%Y-%m-%d", self.started)),
            ("CoreReloadTime", time.strftime("%H:%M:%S", self.started)),
            ("CoreCurrentCalls", str(len(self.channels))),
            # Asterisk counts every call since it started; the simulator counts none.
            ("CoreProcessedCalls", "0"),
        ]
        return _ami_response(action_id, "Success", fields=fields), True

    def _action_coreshowchannels(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        now = time.time()
        events = []
        for uniqueid, channel in dict(self.channels).items():  # a copy: calls come and go
            seconds = max(0, int(now - channel.created))
            duration = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
            caller = channel.call.caller or "<unknown>"
            events.append(
                [
                    ("Event", "CoreShowChannel"),
                    ("ActionID", action_id),
                    ("Channel", f"PJSIP/access-{uniqueid}"),
                    ("ChannelState", "6"),
                    ("ChannelStateDesc", "Up"),
                    ("CallerIDNum", caller),
                    ("CallerIDName", "<unknown>"),
                    ("ConnectedLineNum", "<unknown>"),
                    ("ConnectedLineName", "<unknown>"),
                    ("Language", "en"),
                    ("AccountCode", ""),
                    ("Context", "panel-call"),
                    ("Exten", "s"),
                    ("Priority", "1"),
                    ("Uniqueid", uniqueid),
                    ("Linkedid", uniqueid),
                    ("Application", channel.application),
                    ("ApplicationData", channel.data),
                    ("Duration", duration),
                    ("BridgeId", ""),
                ]
            )
        return _ami_list(
            action_id, "Channels will follow", "CoreShowChannelsComplete", events
        ), True

    def _action_dbgettree(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        family, key = headers.get("family", ""), headers.get("key", "")
        prefix = f"/{family}/{key}" if family and key else f"/{family}" if family else ""
        # Asterisk's query: key || '/' LIKE prefix || '/%', so /panel is no prefix of /panelx.
        found = sorted(
            (k, v)
            for k, v in dict(self.astdb).items()  # a copy: calls write while this reads
            if not prefix or (k + "/").startswith(prefix + "/")
        )
        events = [
            [("Event", "DBGetTreeResponse"), ("Key", k), ("Val", v), ("ActionID", action_id)]
            for k, v in found
        ]
        return _ami_list(action_id, "Result will follow", "DBGetTreeComplete", events), True

    def _action_dbput(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        family, key = headers.get("family", ""), headers.get("key", "")
        if not family:
            return _ami_response(action_id, "Error", "No family specified"), True
        if not key:
            return _ami_response(action_id, "Error", "No key specified"), True
        self.astdb[f"/{family}/{key}"] = headers.get("val", "")
        return _ami_response(action_id, "Success", "Updated database successfully"), True

    def _action_dbdel(
        self, session: dict[str, Any], headers: dict[str, str], action_id: str
    ) -> tuple[bytes, bool]:
        family, key = headers.get("family", ""), headers.get("key", "")
        if not family:
            return _ami_response(action_id, "Error", "No family specified."), True
        if not key:
            return _ami_response(action_id, "Error", "No key specified."), True
        if self.astdb.pop(f"/{family}/{key}", None) is None:
            return _ami_response(action_id, "Error", "Database entry could not be deleted"), True
        return _ami_response(action_id, "Success", "Key deleted successfully"), True


def _ami_message(fields: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in fields).encode() + b"\r\n"


def _ami_response(
    action_id: str,
    response: str,
    message: str | None = None,
    *,
    list_flag: str | None = None,
    fields: Sequence[tuple[str, str]] = (),
) -> bytes:
    """astman_send_response_full's order: Response, ActionID, EventList, Message."""
    out = [("Response", response)]
    if action_id:
        out.append(("ActionID", action_id))
    if list_flag:
        out.append(("EventList", list_flag))
    if message is not None:
        out.append(("Message", message))
    return _ami_message([*out, *fields])


def _ami_list(
    action_id: str, message: str, complete: str, events: list[list[tuple[str, str]]]
) -> bytes:
    """An EventList: the acknowledgement, one event per item, the Complete event."""
    items = [[(k, v) for k, v in event if k != "ActionID" or action_id] for event in events]
    end = [("Event", complete)]
    if action_id:
        end.append(("ActionID", action_id))
    end += [("EventList", "Complete"), ("ListItems", str(len(events)))]
    return b"".join(
        [
            _ami_response(action_id, "Success", message, list_flag="start"),
            *(_ami_message(item) for item in items),
            _ami_message(end),
        ]
    )


class _AmiTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    ami: AmiServer


class _AmiHandler(socketserver.StreamRequestHandler):
    server: _AmiTcp
    timeout = 60  # an idle manager session is closed, as Asterisk's httptimeout would

    def handle(self) -> None:
        ami = self.server.ami
        self.wfile.write(f"Asterisk Call Manager/{AMI_VERSION}\r\n".encode())
        session: dict[str, Any] = {"challenge": "", "authenticated": False}
        message: list[tuple[str, str]] = []
        while True:
            try:
                raw = self.rfile.readline(64 * 1024)
            except OSError:
                return
            if not raw:
                return
            if not raw.endswith(b"\n") or len(raw) > AMI_LINE + 2:
                continue  # Asterisk drops a line too long for its buffer
            line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
            if line:
                key, _, value = line.partition(":")
                message.append((key.strip(), value.strip()))
                continue
            if not message:
                continue
            reply, going_on = ami.act(session, message)
            message = []
            try:
                self.wfile.write(reply)
                self.wfile.flush()
            except OSError:
                return
            if not going_on:
                return
