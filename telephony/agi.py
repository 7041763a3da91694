"""The AGI command layer: pyst2's AGI class, made to work over a FastAGI socket in Python 3.

pyst2 reads the environment and formats commands well, but in a FastAGI server it fails in
known ways, handled here:
- ``AGI()`` installs a SIGHUP handler, which fails outside the main thread: not installed.
- FastAGI sends an unsolicited ``HANGUP`` line (at the end of every session, and when the
  caller hangs up, possibly between a command and its reply); pyst2 takes it for the reply
  and every later reply is off by one. Here it is noted and skipped.
- a ``511`` reply (dead channel) raises AGIUnknownError in pyst2; here it is ChannelGone.
- any ``result=-1`` raises AGIAppError in pyst2, but ``EXEC Dial`` answers -1 after a normal
  call when the callee hangs up; here results are returned and the caller of a command
  decides what -1 means.
One exception for everything, AgiError, with ``permanent`` (a refused command, a gone
channel) or not (a timeout on the socket).
"""

from __future__ import annotations

import io
import re
import socket
import time
from typing import IO, Any

from asterisk import agi as pyst2

CODE = re.compile(r"^(\d{3})[ -]?(.*)$")
PLAIN = re.compile(r"[A-Za-z0-9/@.:+_-]{0,200}")
KEY_VALUE = re.compile(r"(?P<key>\w+)=(?P<value>\S*)\s*(?:\((?P<data>.*?)\))?")


class AgiError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class ChannelGone(AgiError):
    """The caller hung up: channel commands are refused from now on (GET VARIABLE still works)."""

    def __init__(self, message: str = "the channel is gone") -> None:
        super().__init__(message, permanent=True)


class SocketLines:
    """Lines read from a socket, each within a deadline.

    A socket timeout bounds each read, not a line: a peer sending a byte every few seconds
    kept a session (and its slot) open for as long as it liked. Here a line must be complete
    by ``deadline`` (monotonic seconds), or by ``timeout`` from when its reading began.
    """

    def __init__(self, sock: socket.socket, *, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.deadline: float | None = None
        self.buffer = bytearray()

    def readline(self, limit: int = 8192) -> bytes:
        deadline = self.deadline if self.deadline is not None else time.monotonic() + self.timeout
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0 or len(self.buffer) >= limit:
                cut = end + 1 if end >= 0 else limit
                line = bytes(self.buffer[:cut])
                del self.buffer[:cut]
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no whole line in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(4096)
            if not chunk:
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            self.buffer += chunk


class Session(pyst2.AGI):
    """One FastAGI conversation with Asterisk over a connected socket's file objects.

    The environment block must arrive whole within ``ENV_SECONDS`` and stay within
    ``ENV_LINES`` lines of ``LINE_BYTES`` each: Asterisk sends about 25 short lines at once,
    and anything else is a stranger or a broken peer holding a slot.
    """

    ENV_SECONDS = 5.0
    ENV_LINES = 200
    LINE_BYTES = 4096
    REPLY_SECONDS = 30.0

    def __init__(self, reader: IO[bytes] | Any, writer: IO[bytes] | Any) -> None:
        # Not pyst2's __init__: no SIGHUP handler, no writes to sys.stderr.
        self.stdin = reader
        self.stdout = writer
        self.stderr = io.StringIO()
        self._got_sighup = False
        self.hung_up = False
        self.env: dict[str, str] = {}
        self.transcript: list[tuple[str, str]] = []
        self._read_env()

    # The wire --------------------------------------------------------------------------------

    def _within(self, seconds: float | None) -> None:
        """Give the next lines until ``seconds`` from now (None: each line its own timeout)."""
        if isinstance(self.stdin, SocketLines):
            self.stdin.deadline = None if seconds is None else time.monotonic() + seconds

    def _readline(self) -> str:
        try:
            raw = self.stdin.readline(self.LINE_BYTES + 1)
        except TimeoutError:
            raise AgiError("Asterisk did not answer in time", permanent=False) from None
        except OSError as exc:
            raise AgiError(f"the connection broke: {exc}", permanent=False) from None
        if not raw:
            raise ChannelGone("Asterisk closed the connection")
        if len(raw) > self.LINE_BYTES:
            raise AgiError(f"a line longer than {self.LINE_BYTES} bytes", permanent=True)
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        self.transcript.append(("<<", line))
        return line

    def _read_env(self) -> None:
        self._within(self.ENV_SECONDS)
        try:
            for _ in range(self.ENV_LINES):
                line = self._readline()
                if line == "":
                    return
                if line == "HANGUP":
                    self.hung_up = True
                    continue
                key, _, value = line.partition(":")
                if key.startswith("agi_"):
                    self.env[key.strip()] = value.strip()
            raise AgiError(f"an environment of more than {self.ENV_LINES} lines", permanent=True)
        finally:
            self._within(None)

    def send_command(self, command: str, *args: Any) -> None:
        text = " ".join([command.strip(), *map(str, args)]).strip()
        if "\n" in text or "\r" in text:
            raise AgiError("a command is one line", permanent=True)
        self.transcript.append((">>", text))
        try:
            self.stdout.write((text + "\n").encode())
            self.stdout.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.hung_up = True
            raise ChannelGone("Asterisk closed the connection") from None
        except OSError as exc:
            raise AgiError(f"the connection broke: {exc}", permanent=False) from None

    def get_result(self, stdin: Any = None) -> dict[str, tuple[str, str]]:
        line = self._readline()
        while line == "HANGUP":  # unsolicited, even between a command and its reply
            self.hung_up = True
            line = self._readline()
        match = CODE.match(line)
        if not match:
            raise AgiError(f"unexpected line from Asterisk: {line!r}", permanent=True)
        code, rest = int(match.group(1)), match.group(2)
        if code == 200:
            result: dict[str, tuple[str, str]] = {"result": ("", "")}
            for found in KEY_VALUE.finditer(rest):
                result[found["key"]] = (found["value"], found["data"] or "")
            return result
        if code == 511:
            self.hung_up = True
            raise ChannelGone(rest or "511 dead channel")
        if code == 520:
            usage = [rest]
            while True:
                more = self._readline()
                usage.append(more)
                if more.startswith("520 "):
                    break
            raise AgiError("invalid command syntax: " + " / ".join(usage), permanent=True)
        if code == 510:
            raise AgiError(f"Asterisk does not know the command: {rest}", permanent=True)
        raise AgiError(f"unexpected reply {code} {rest}", permanent=True)

    def test_hangup(self) -> None:
        """pyst2 checks its SIGHUP flag here; FastAGI has no signals."""

    # Commands this project uses (pyst2 formats them) ----------------------------------------

    def result_of(self, command: str, *args: Any) -> tuple[str, str]:
        return self.execute(command, *args)["result"]

    def stream(self, filename: str) -> None:
        """Play a prompt; a caller who hung up meanwhile makes this raise ChannelGone."""
        value, _ = self.result_of("STREAM FILE", filename, '""')
        if value == "-1" and self.hung_up:
            raise ChannelGone("the caller hung up during a prompt")

    def read_digits(self, prompt: str, *, timeout_ms: int, max_digits: int) -> str:
        """GET DATA: the digits keyed in ("" on a timeout with nothing typed).

        Asterisk answers when the caller is done: the prompt, then up to the timeout for each
        digit. The reply may take that long, and no longer.
        """
        self._within(self.REPLY_SECONDS + max_digits * timeout_ms / 1000)
        try:
            value, _data = self.result_of("GET DATA", prompt, timeout_ms, max_digits)
        finally:
            self._within(None)
        if value == "-1":
            raise ChannelGone("the caller hung up while keying in")
        return value

    def set(self, name: str, value: str) -> None:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]{0,40}", name) or '"' in value or "\n" in value:
            raise AgiError(f"refusing to set {name}={value!r}", permanent=True)
        self.set_variable(name, value)

    def set_many(self, values: dict[str, str]) -> None:
        """Set several variables with one command, Asterisk's MSet application.

        MSet splits on commas and equals signs and strips quotes, so only plain values are
        accepted (dial strings, numbers, words).
        """
        for name, value in values.items():
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]{0,40}", name) or not PLAIN.fullmatch(value):
                raise AgiError(f"refusing to set {name}={value!r}", permanent=True)
        self.exec_command("MSet", *(f"{name}={value}" for name, value in values.items()))

    def get(self, name: str) -> str:
        value, data = self.result_of("GET VARIABLE", self._quote(name))
        return data if value == "1" else ""
