"""A small synchronous client of Asterisk's manager interface (AMI), standard library only.

The panel's call reconciliation reads Asterisk's database and channels through it::

    with Ami(parse_url("ami://panel:SECRET@10.0.0.5:5038")) as ami:
        ami.action("DBPut", Family="panel", Key="k", Val="v")
        entries = ami.action_list("DBGetTree", Family="panel")

Login uses the MD5 challenge, so the secret never crosses the wire. Every read has a deadline
and every line and message a size cap, so a peer that stops talking or never stops cannot
hold the caller or fill its memory. Header values with CR or LF are refused, so no value
can smuggle in a header or a second action.

One exception for everything, AmiError, with ``permanent``: a refused login, an action
Asterisk answered with ``Response: Error`` (ActionFailed, a subclass), a refused value or a
peer that does not speak AMI (retrying will not help); or not: connection refused or reset,
a timeout (try again later).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import socket
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

DEFAULT_TIMEOUT = 5.0
# Asterisk's own lines are short (it reads at most 1 KiB per inbound line); channel
# variables in events can be longer, but not this long.
MAX_LINE = 16 * 1024
MAX_MESSAGE = 256 * 1024
MAX_HEADERS = 2000
# An EventList longer than this is not something the panel asked for.
MAX_LIST_ITEMS = 200_000

USER = re.compile(r"[A-Za-z0-9._-]{1,80}")
# RFC 3986 userinfo characters (percent-escapes decoded afterwards).
SECRET_RAW = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]{1,384}")
SECRET = re.compile(r"[!-~]{1,128}")
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]")
PORT = re.compile(r"[0-9]{1,5}")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,79}")
GREETING = b"Asterisk Call Manager/"

FieldValue = str | int | Sequence[str]


class AmiError(Exception):
    """An AMI failure; ``permanent`` says whether trying again later can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class ActionFailed(AmiError):
    """Asterisk answered an action with ``Response: Error``; ``reason`` is its Message.

    Permanent: the same action would get the same answer (a refused login, a missing AstDB
    entry). A class of its own, so callers can tell it from a broken connection.
    """

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"{action}: {reason}", permanent=True)
        self.action = action
        self.reason = reason


@dataclass(frozen=True)
class AmiTarget:
    """Where and as whom to log in.

    The repr and str leave the secret out: targets end up in log lines and error messages.
    """

    host: str
    port: int
    username: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ami://{self.username}@{host}:{self.port}"


def parse_url(url: str) -> AmiTarget:
    """``ami://USER:SECRET@HOST:PORT`` as an AmiTarget; ValueError saying which part is wrong.

    Each part is checked against an allowlist, because the URL comes from the environment and
    its parts end up in a socket address and a login. The secret may be percent-encoded (for
    ``@``, ``:`` or ``/`` in it); errors never repeat it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "ami":
        raise ValueError("the AMI URL must start with ami:// (ami://USER:SECRET@HOST:PORT)")
    userinfo, sep, hostport = rest.rpartition("@")
    if not sep:
        raise ValueError("the AMI URL has no USER:SECRET@ part (ami://USER:SECRET@HOST:PORT)")
    username, sep, raw_secret = userinfo.partition(":")
    if not USER.fullmatch(username):
        raise ValueError(f"the AMI user name must match {USER.pattern}")
    if not sep or not SECRET_RAW.fullmatch(raw_secret):
        raise ValueError(
            "the AMI secret is missing or has characters a URL cannot carry (percent-encode them)"
        )
    secret = urllib.parse.unquote(raw_secret, errors="strict")
    if not SECRET.fullmatch(secret):
        raise ValueError("the AMI secret must be 1-128 printable ASCII characters, no spaces")
    host, sep, port = hostport.rpartition(":")
    if not sep or not HOST.fullmatch(host):
        raise ValueError(f"the AMI host must match {HOST.pattern} and be followed by :PORT")
    if not PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError("the AMI port must be a number from 1 to 65535")
    return AmiTarget(host=host.strip("[]"), port=int(port), username=username, secret=secret)


def format_action(name: str, action_id: str, fields: dict[str, FieldValue]) -> bytes:
    """One action on the wire; AmiError(permanent) for a name or value that could inject.

    A CR or LF in a value would end the header there and start another one (or another
    action) chosen by whoever wrote the value. A sequence value repeats the header, as
    Originate's ``Variable`` needs.
    """
    lines = [("Action", name), ("ActionID", action_id)]
    for key, value in fields.items():
        values = value if isinstance(value, list | tuple) else [value]
        lines.extend((key, str(item)) for item in values)
    out = []
    for key, text in lines:
        if not NAME.fullmatch(key):
            raise AmiError(f"{key!r} is not an AMI header name", permanent=True)
        if "\r" in text or "\n" in text or "\0" in text:
            raise AmiError(f"the value of {key} contains a line break or NUL", permanent=True)
        out.append(f"{key}: {text}\r\n")
    out.append("\r\n")
    return "".join(out).encode("utf-8")


class MessageReader:
    """Reads AMI messages (header blocks ended by an empty line) from a socket, with caps.

    Repeated headers (a Command's ``Output`` lines) are joined with a newline.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AmiError("Asterisk did not answer in time", permanent=False)
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise AmiError("Asterisk did not answer in time", permanent=False) from None
        except OSError as exc:
            raise AmiError(f"the AMI connection broke: {exc}", permanent=False) from None
        if not chunk:
            raise AmiError("Asterisk closed the AMI connection", permanent=False)
        self._buffer += chunk

    def read_line(self, deadline: float) -> bytes:
        """One line without its CRLF; a line over MAX_LINE means the peer is not AMI."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                if end > MAX_LINE:
                    break
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.rstrip(b"\r")
            if len(self._buffer) > MAX_LINE:
                break
            start = len(self._buffer)
            self._fill(deadline)
        raise AmiError(f"the AMI peer sent a line longer than {MAX_LINE} bytes", permanent=True)

    def read_message(self, deadline: float) -> dict[str, str]:
        """The next message: its headers; empty lines between messages are skipped."""
        message: dict[str, str] = {}
        size = count = 0
        while True:
            line = self.read_line(deadline)
            if not line:
                if message:
                    return message
                continue
            size += len(line) + 2
            count += 1
            if size > MAX_MESSAGE or count > MAX_HEADERS:
                raise AmiError(
                    f"the AMI peer sent a message over {MAX_MESSAGE} bytes or {MAX_HEADERS} "
                    "headers",
                    permanent=True,
                )
            key, sep, value = line.decode("utf-8", errors="replace").partition(":")
            if not sep:
                # Not a header: Asterisk sends none such outside the greeting.
                raise AmiError(
                    f"the AMI peer sent a line that is no header: {key[:80]!r}", permanent=True
                )
            value = value[1:] if value.startswith(" ") else value
            key = key.strip()
            message[key] = f"{message[key]}\n{value}" if key in message else value


def connect(target: AmiTarget, *, timeout: float) -> tuple[socket.socket, MessageReader]:
    """A TCP connection to the manager, its greeting read; AmiError otherwise.

    The greeting is checked so that a wrong port (SSH, HTTP) fails at once and for good
    instead of timing out like a busy Asterisk.
    """
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except OSError as exc:
        raise AmiError(f"cannot connect to {target}: {exc}", permanent=False) from None
    reader = MessageReader(sock)
    try:
        greeting = reader.read_line(time.monotonic() + timeout)
        if not greeting.startswith(GREETING):
            raise AmiError(
                f"{target} does not greet as Asterisk's manager: {greeting[:80]!r}", permanent=True
            )
    except BaseException:
        sock.close()
        raise
    return sock, reader


def challenge_key(challenge: str, secret: str) -> str:
    """The MD5 login key, md5(challenge + secret) in hex, as Asterisk's manager computes it.

    The challenge is fresh per session, so the key is worthless to whoever records it.
    """
    return hashlib.md5((challenge + secret).encode("utf-8"), usedforsecurity=False).hexdigest()


class Ami:
    """One logged-in manager session; use it as a context manager (logs off on exit).

    Synchronous and single-threaded: the reconciliation asks a few questions per run, and
    a session per run is simpler to reason about than a shared connection.
    """

    def __init__(
        self, target: AmiTarget | str, *, timeout: float = DEFAULT_TIMEOUT, events: str = "off"
    ) -> None:
        self.target = parse_url(target) if isinstance(target, str) else target
        self.timeout = timeout
        self.events = events
        self._ids = itertools.count(1)
        self._prefix = f"panel-{id(self):x}"
        self._sock: socket.socket | None = None
        self._reader: MessageReader | None = None

    def __enter__(self) -> Ami:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect and log in with the MD5 challenge (the secret itself is never sent)."""
        self._sock, self._reader = connect(self.target, timeout=self.timeout)
        try:
            challenge = self.action("Challenge", AuthType="MD5").get("Challenge", "")
            if not challenge:
                raise AmiError(f"{self.target} sent no MD5 challenge", permanent=True)
            try:
                self.action(
                    "Login",
                    Username=self.target.username,
                    AuthType="MD5",
                    Key=challenge_key(challenge, self.target.secret),
                    Events=self.events,
                )
            except ActionFailed as exc:
                raise ActionFailed(
                    "Login", f"{self.target} refused the login: {exc.reason}"
                ) from None
        except BaseException:
            self._drop()
            raise

    def close(self) -> None:
        """Log off (best effort: the session may already be gone) and close the socket."""
        if self._sock is None:
            return
        with contextlib.suppress(AmiError):
            self._send("Logoff", {})
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    def _send(self, name: str, fields: dict[str, FieldValue]) -> str:
        if self._sock is None:
            raise AmiError("the AMI session is not open", permanent=False)
        action_id = f"{self._prefix}-{next(self._ids)}"
        data = format_action(name, action_id, fields)
        self._sock.settimeout(self.timeout)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise AmiError(
                f"sending {name} to {self.target} failed: {exc}", permanent=False
            ) from None
        return action_id

    def _read(self, deadline: float) -> dict[str, str]:
        if self._reader is None:
            raise AmiError("the AMI session is not open", permanent=False)
        return self._reader.read_message(deadline)

    def _response(self, name: str, action_id: str) -> dict[str, str]:
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read(deadline)
            # Unsolicited events (Events: on) and late answers to earlier actions pass by.
            if "Response" not in message or message.get("ActionID") != action_id:
                continue
            if message["Response"] == "Error":
                raise ActionFailed(name, message.get("Message", "error without a message"))
            return message

    def action(self, name: str, **fields: FieldValue) -> dict[str, str]:
        """Send one action and return its response (matched by ActionID).

        ActionFailed (an AmiError, permanent) when Asterisk answers ``Response: Error``.
        """
        return self._response(name, self._send(name, fields))

    def action_list(self, name: str, **fields: FieldValue) -> list[dict[str, str]]:
        """Send an action that answers with an EventList and return the list's events.

        Asterisk acknowledges with ``EventList: start``, sends one event per item with the
        ActionID, and ends with a ``...Complete`` event (``EventList: Complete``). The
        deadline restarts with each item, so a long list is fine and a stalled one is not.
        """
        action_id = self._send(name, fields)
        ack = self._response(name, action_id)
        if ack.get("EventList", "").lower() != "start":
            raise AmiError(f"{name} answered without an event list", permanent=True)
        items: list[dict[str, str]] = []
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read(deadline)
            if message.get("ActionID") != action_id or "Event" not in message:
                continue
            if message.get("EventList", "").lower() == "complete":
                return items
            items.append(message)
            if len(items) > MAX_LIST_ITEMS:
                raise AmiError(f"{name} lists more than {MAX_LIST_ITEMS} items", permanent=True)
            deadline = time.monotonic() + self.timeout
