"""A real Asterisk for tests, with a simulated phone network around it.

Only the phone network is simulated; Asterisk, its dialplan engine, AGI, Dial, bridges and
AstDB are real. A test loads a dialplan (the panel's, from ``manage.py asterisk_dialplan``)
and places calls::

    pbx.load_dialplan(panel_dialplan)
    call = pbx.call("+4930900900", caller_id="+4915112345678", digits=["1234", "4930123"])
    call.wait_done(30)
    assert call.variable("AUTH_RESULT") == "OK"
    assert call.variable("DIALSTATUS") == "ANSWER"

How a call is made: an AMI ``Originate`` of ``Local/DID@sim-inbound/n``. The ``;2`` half of
that Local channel sets ``CALLERID(num)`` and ``CALLERID(dnid)`` and enters the access-number
context at the DID, as a carrier's trunk call would: it runs the panel's dialplan, and its
uniqueid is the ``agi_uniqueid`` the FastAGI server sees (``Call.uniqueid``). The ``;1`` half
is the caller's phone: the harness watches AMI events, and each time the panel's channel
starts ``GET DATA`` (or ``Read()``) it keys in the next digit string and ``#`` (received on
the panel's channel, as DTMF from a trunk is), or hangs up where the test said so. Each
call's channels share the caller's uniqueid as their Linkedid, which is how the harness
gives every event to its call, so calls may run side by side.

Callees are dialplan contexts the panel's trunks dial (``Trunk.dial_template``):
``Local/{number}@sim-answer/n`` answers and holds (``hold`` seconds), ``sim-ring`` rings and
never answers (or gives up after ``give_up_after`` seconds: NOANSWER), ``sim-busy`` is
busy, ``sim-congested`` congested, ``sim-unavailable`` fails before answering with cause 3
(no route), which Dial reports as CHANUNAVAIL.

Each Pbx writes its own configuration into a directory of its own (nothing of the machine's
is read or written), loads only the modules the build has, and listens only on a loopback
AMI port: no SIP, no IAX, no HTTP.

What this Asterisk does that end-to-end tests must know (seen with 22.10.1):

- DTMF: a digit that comes within 45 ms of the previous one is held back until the channel
  reads another frame, which a Local channel without media never does; the caller here keys
  one digit per ~60 ms, waiting for each DTMFEnd. The ``#`` is left out when the digits
  fill GET DATA's maximum, since it would end the next prompt.
- Answer() on a Local channel waits about 0.5 s for media; so does each callee's answer.
- ``_X.`` does not match a DID with ``+``; the panel's dialplan has ``_+X.`` for that.
- FastAGI: a refused connection gives AGISTATUS=FAILURE, one accepted and closed SUCCESS.
  A server that accepts and never speaks holds the channel for good, even after the caller
  hangs up (no timeout): only closing the socket frees it.
- The caller hanging up during GET DATA: ``200 result=-1``, then ``HANGUP``, then channel
  commands answer 511; SET/GET VARIABLE still work.
- Hangup handlers run after the channel hung up, on a dead channel: AGI connects and works
  (channel commands such as STREAM FILE answer 511); ``Wait()`` returns at once and ends the
  handler there, so nothing after it runs. The channel's Hangup event comes after its
  handlers finished. ``core stop now`` runs them; a SIGKILL does not.
- AstDB commits from a background thread at most once a second: after a write, up to a
  second passes before it would survive a crash (db_committed() shows what would).
- STRFTIME(,,%s) is wrong by the zone's UTC offset when Asterisk runs with TZ set to another
  zone; the harness starts it without TZ (Django sets TZ in the test process).
- CoreShowChannels may show a channel's previous application for a moment after Newexten.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from telephony import ami
from tests.asterisk.build import MODULES, Installation

Event = dict[str, str]

PROMPTS = (
    "custom/enter-pin",
    "custom/enter-account",
    "custom/enter-number",
    "custom/enter-code",
    "custom/pin-wrong",
    "custom/invalid-number",
    "custom/goodbye",
    "custom/no-credit",
    "custom/no-rate",
    "custom/too-many-calls",
    "custom/destination-blocked",
    "custom/unknown-access",
    "custom/phone-verified",
    "custom/try-later",
    "custom/pin-locked",
)
PROMPT_NAME = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
NUMBER = re.compile(r"\+?[0-9]{1,20}")
CALLER_ID = re.compile(r"\+?[0-9]{0,20}")
CONTEXT = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,79}")
VARIABLE = re.compile(r"_{0,2}[A-Za-z][A-Za-z0-9_]{0,79}")
# Applications and AGI commands that play files; the file is their first argument.
PLAYING_APPS = {"playback", "background", "controlplayback"}
PLAYING_AGI = ("STREAM FILE ", "GET DATA ", "CONTROL STREAM FILE ", "GET OPTION ")
# Events kept for EventClient.wait_for(since=...): plenty for the waits of a few calls.
HISTORY = 100_000
# Between one digit's end and the next digit (Asterisk wants at least 45 ms).
DTMF_GAP = 0.06
# Unix socket paths are limited to 108 bytes; the control socket lives in the run directory.
MAX_RUN_DIR = 90

SIM_DIALPLAN = """\
; Written by tests/asterisk/pbx.py: the simulated phone network around the panel's dialplan.

; The carrier's side of an inbound call: the ;2 half of Local/DID@sim-inbound/n, entering the
; access-number context at the DID with the caller's number, as a trunk call does.
[sim-inbound]
exten => _X!,1,Set(CALLERID(num)=${SIM_CALLER})
 same => n,Set(CALLERID(dnid)=${EXTEN})
 same => n,Goto(${SIM_CONTEXT},${EXTEN},1)
exten => _+X!,1,Set(CALLERID(num)=${SIM_CALLER})
 same => n,Set(CALLERID(dnid)=${EXTEN})
 same => n,Goto(${SIM_CONTEXT},${EXTEN},1)

; The caller's phone (the ;1 half): it stays on the line; the harness keys in the digits and
; hangs it up. SIM_MAX_SECONDS ends a call the test forgot.
[sim-caller]
exten => s,1,Wait(${SIM_MAX_SECONDS})
 same => n,Hangup()

; Callees, dialled by the panel's trunks as Local/{number}@sim-.../n.
[sim-answer]
exten => _X!,1,Goto(sim-answer-run,s,1)
exten => _+X!,1,Goto(sim-answer-run,s,1)

[sim-answer-run]
exten => s,1,Ringing()
 same => n,Wait(${IF($["${SIM_ANSWER_AFTER}" = ""]?0:${SIM_ANSWER_AFTER})})
 same => n,Answer()
 same => n,Wait(${IF($["${SIM_HOLD}" = ""]?30:${SIM_HOLD})})
 same => n,Hangup()

[sim-ring]
exten => _X!,1,Goto(sim-ring-run,s,1)
exten => _+X!,1,Goto(sim-ring-run,s,1)

[sim-ring-run]
; Without SIM_GIVE_UP_AFTER it rings until the caller's Dial times out; with it, it gives
; up like a carrier with cause 19 (no answer), which Dial reports as NOANSWER.
exten => s,1,Ringing()
 same => n,Wait(${IF($["${SIM_GIVE_UP_AFTER}" = ""]?3600:${SIM_GIVE_UP_AFTER})})
 same => n,Hangup(19)

[sim-busy]
exten => _X!,1,Busy(30)
exten => _+X!,1,Busy(30)

[sim-congested]
exten => _X!,1,Congestion(30)
exten => _+X!,1,Congestion(30)

[sim-unavailable]
exten => _X!,1,Hangup(3)
exten => _+X!,1,Hangup(3)
"""


class PbxError(RuntimeError):
    """Asterisk did not do what the harness needed; the message has the tail of its log."""


def free_port() -> int:
    """A TCP port free on loopback now (Asterisk binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def asterisk_environment() -> dict[str, str]:
    """The environment for Asterisk: this process's, without TZ.

    Django sets TZ to TIME_ZONE in the test process, and an Asterisk started with TZ set to
    a zone other than UTC gets ``STRFTIME(,,%s)`` wrong by the zone's offset (an hour early
    for Europe/Berlin), which the panel's dialplan bills from. Servers run it without TZ,
    with the zone in /etc/localtime, where it is right.
    """
    return {key: value for key, value in os.environ.items() if key != "TZ"}


def write_silence(path: Path, seconds: float = 0.2) -> None:
    """A silent 8 kHz mono 16-bit WAV: a prompt that plays (PLAYBACKSTATUS=SUCCESS) quickly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * int(8000 * seconds))


def _first_file(argument: str) -> list[str]:
    """The files an app or AGI command was asked to play (``a&b`` plays both)."""
    head = argument.split(",", 1)[0].strip().strip('"')
    return [part for part in head.split("&") if part]


def _matches(played: str, name: str) -> bool:
    return played == name or played.rsplit("/", 1)[-1] == name


class EventClient:
    """An AMI session for tests: a reader thread, subscribers, and waits on events.

    Built on telephony.ami's framing and login. Actions may be sent from any thread except
    from a subscriber callback (it runs in the reader thread, which must keep reading to
    deliver the answer); callbacks must return at once.
    """

    def __init__(self, target: ami.AmiTarget, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._sock, self._reader = ami.connect(target, timeout=timeout)
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._responses: dict[str, Event] = {}
        self._lists: dict[str, list[Event]] = {}
        # Recent events, for waits that start after their event: _history[i] has the
        # sequence number _base + i; the older half goes when it grows past HISTORY.
        self._history: list[Event] = []
        self._base = 1
        self._seq = 0
        self._subscribers: list[Callable[[Event], None]] = []
        self._closed = False
        self.error: BaseException | None = None
        self._login()
        self._thread = threading.Thread(target=self._read_loop, name="ami-events", daemon=True)
        self._thread.start()

    def _login(self) -> None:
        # Synchronous, before the reader thread exists.
        deadline = time.monotonic() + self.timeout

        def exchange(name: str, **fields: ami.FieldValue) -> Event:
            action_id = f"login-{next(self._ids)}"
            self._sock.sendall(ami.format_action(name, action_id, fields))
            while True:
                message = self._reader.read_message(deadline)
                if message.get("ActionID") == action_id and "Response" in message:
                    if message["Response"] == "Error":
                        raise ami.ActionFailed(name, message.get("Message", ""))
                    return message

        challenge = exchange("Challenge", AuthType="MD5")["Challenge"]
        exchange(
            "Login",
            Username=self.target.username,
            AuthType="MD5",
            Key=ami.challenge_key(challenge, self.target.secret),
            Events="on",
        )

    def _read_loop(self) -> None:
        try:
            while True:
                message = self._reader.read_message(time.monotonic() + 86400)
                with self._cond:
                    self._dispatch(message)
                    self._cond.notify_all()
        except BaseException as exc:  # kept for the waiters' error messages
            with self._cond:
                if not self._closed:
                    self.error = exc
                self._closed = True
                self._cond.notify_all()

    def _dispatch(self, message: Event) -> None:
        action_id = message.get("ActionID", "")
        # OriginateResponse is an event with a Response header.
        if "Event" not in message:
            self._responses[action_id] = message
            return
        if action_id in self._lists:
            self._lists[action_id].append(message)
        self._seq += 1
        self._history.append(message)
        if len(self._history) > HISTORY:
            drop = len(self._history) // 2
            del self._history[:drop]
            self._base += drop
        for subscriber in list(self._subscribers):
            subscriber(message)

    def close(self) -> None:
        """Log off and stop the reader thread; waiters get PbxError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._sock.sendall(ami.format_action("Logoff", "logoff", {}))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)

    @property
    def alive(self) -> bool:
        """False once the connection closed (Asterisk stopped or died, or close())."""
        return not self._closed

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call callback(event) for every event; returns the function that unsubscribes.

        The callback runs in the reader thread with the client's lock held, so that it sees
        events in order and before any waiter: it must return at once and send no action.
        """
        with self._cond:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._cond:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def mark(self) -> int:
        """A position in the event stream, for wait_for(since=...).

        Take it before the action that causes an event: the event may arrive before the
        wait starts, and a wait from "now" would miss it.
        """
        with self._cond:
            return self._seq

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float, *, since: int | None = None
    ) -> Event:
        """The first event after ``since`` (default: now) that satisfies predicate.

        Events from before the wait are kept (the last HISTORY of them), so with a mark
        taken beforehand nothing is missed; TimeoutError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            position = self._seq if since is None else since
            while True:
                start = max(position + 1, self._base)
                for index in range(start - self._base, len(self._history)):
                    if predicate(self._history[index]):
                        return self._history[index]
                position = self._seq
                if self._closed:
                    raise PbxError(f"the AMI connection closed: {self.error}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching AMI event within {timeout} s")
                self._cond.wait(remaining)

    def new_action_id(self) -> str:
        """An ActionID for an action sent later, for matching its events before it is sent."""
        return f"t-{next(self._ids)}"

    def _send(
        self,
        name: str,
        fields: Mapping[str, ami.FieldValue],
        *,
        listing: bool,
        action_id: str | None = None,
    ) -> str:
        action_id = action_id or self.new_action_id()
        data = ami.format_action(name, action_id, dict(fields))
        with self._cond:
            if self._closed:
                raise PbxError(f"the AMI connection is closed: {self.error}")
            if listing:
                self._lists[action_id] = []
        # Callers key in digits from threads of their own: one action's bytes at a time.
        with self._send_lock:
            self._sock.sendall(data)
        return action_id

    def _await(self, name: str, action_id: str, timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while action_id not in self._responses:
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise PbxError(f"the AMI connection closed during {name}: {self.error}")
                if remaining <= 0:
                    raise TimeoutError(f"{name}: no response within {timeout} s")
                self._cond.wait(remaining)
            response = self._responses.pop(action_id)
            if response.get("Response") == "Error":
                self._lists.pop(action_id, None)
        if response.get("Response") == "Error":
            raise ami.ActionFailed(name, response.get("Message", ""))
        return response

    def action(self, name: str, *, timeout: float | None = None, **fields: ami.FieldValue) -> Event:
        """Send an action and return its response (matched by ActionID).

        AmiError on ``Response: Error``, as telephony.ami does, so tests read the same
        failures the panel's client would.
        """
        return self._await(name, self._send(name, fields, listing=False), timeout or self.timeout)

    def send(self, name: str, **fields: ami.FieldValue) -> str:
        """Send an action without waiting for its response; returns its ActionID.

        For actions whose effect a test waits for as an event instead.
        """
        return self._send(name, fields, listing=False)

    def action_list(
        self, name: str, *, timeout: float | None = None, **fields: ami.FieldValue
    ) -> list[Event]:
        """Send an EventList action (CoreShowChannels, DBGetTree) and return its items.

        The items come as events between the other events; the ``...Complete`` event that
        ends the list is left out.
        """
        timeout = timeout or self.timeout
        action_id = self._send(name, fields, listing=True)
        self._await(name, action_id, timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            try:
                while True:
                    items = self._lists[action_id]
                    if items and items[-1].get("EventList", "").lower() == "complete":
                        return items[:-1]
                    remaining = deadline - time.monotonic()
                    if self._closed:
                        raise PbxError(f"the AMI connection closed during {name}")
                    if remaining <= 0:
                        raise TimeoutError(f"{name}: the list did not complete in {timeout} s")
                    self._cond.wait(remaining)
            finally:
                self._lists.pop(action_id, None)


@dataclass
class _Script:
    digits: list[str]
    terminator: str
    hangup_at: str | int | None
    hangup_after_answer: float | None


class Call:
    """One simulated inbound call: its AMI events, and the scripted caller behind it.

    ``uniqueid`` is the channel that runs the panel's dialplan (the Local ``;2`` half, the
    FastAGI server's ``agi_uniqueid``); ``caller_uniqueid`` is the caller's phone (``;1``).
    Every event of the call's channels is kept (they share the Linkedid, the caller's
    uniqueid), the callees' too. Readers take a snapshot under the client's lock.
    """

    def __init__(self, pbx: Pbx, token: str, script: _Script) -> None:
        self.pbx = pbx
        # This call's manager session: the call stays readable after a kill() or restart().
        self._client = pbx.ami
        self.token = token
        self.caller_uniqueid = f"sim-{token}-1"
        self.uniqueid = f"sim-{token}-2"
        self.script = script
        self._events: list[Event] = []
        self._channels: dict[str, str] = {}  # uniqueid -> channel name
        self._hung_up: dict[str, Event] = {}
        self.prompts_seen: list[str] = []
        self.digits_sent: list[str] = []
        self.errors: list[str] = []
        self._keying = threading.Lock()
        self.originate_id = ""
        self.originate_response: Event | None = None
        self.answered_at: float | None = None
        self.hung_up_by_caller = False
        self.started = time.monotonic()

    # Fed by the reader thread, with the client's lock held -----------------------------------

    def _belongs(self, event: Event) -> bool:
        if event.get("Event") == "OriginateResponse":
            return event.get("ActionID") == self.originate_id
        linked = event.get("Linkedid") or event.get("LocalOneLinkedid")
        return linked == self.caller_uniqueid or event.get("Uniqueid") in (
            self.caller_uniqueid,
            self.uniqueid,
        )

    def _on_event(self, event: Event) -> None:
        self._events.append(event)
        name = event.get("Event", "")
        uniqueid = event.get("Uniqueid", "")
        if name == "OriginateResponse":
            self.originate_response = event
            return
        if uniqueid and "Channel" in event:
            self._channels.setdefault(uniqueid, event["Channel"])
        if name == "Hangup":
            self._hung_up[uniqueid] = event
            return
        if uniqueid != self.uniqueid:
            return
        prompt, most = None, ""
        if name == "AGIExecStart" and event.get("Command", "").upper().startswith("GET DATA "):
            # GET DATA FILE [TIMEOUT [MAXDIGITS]]
            words = event["Command"].split()
            prompt = words[2] if len(words) > 2 else ""
            most = words[4] if len(words) > 4 else ""
        elif name == "Newexten" and event.get("Application", "").lower() == "read":
            # Read(VARIABLE,FILE,MAXDIGITS,...)
            args = event.get("AppData", "").split(",")
            prompt = args[1] if len(args) > 1 else ""
            most = args[2] if len(args) > 2 else ""
        elif name == "DialEnd" and event.get("DialStatus") == "ANSWER":
            self.answered_at = time.monotonic()
            if self.script.hangup_after_answer is not None:
                timer = threading.Timer(self.script.hangup_after_answer, self.hangup)
                timer.daemon = True
                timer.start()
        if prompt is not None:
            self._on_prompt(prompt, int(most) if most.isdigit() and int(most) > 0 else None)

    def _on_prompt(self, prompt: str, most: int | None) -> None:
        step = len(self.prompts_seen)
        self.prompts_seen.append(prompt)
        at = self.script.hangup_at
        if (isinstance(at, int) and at == step) or (isinstance(at, str) and _matches(prompt, at)):
            self.pbx._later(self.hangup)
        elif step < len(self.script.digits):
            keys = self.script.digits[step]
            # A prompt that has all its digits ends there; a # after them would end the next
            # prompt instead, as it would for a real caller.
            if most is None or len(keys) < most:
                keys += self.script.terminator
            self.digits_sent.append(keys)
            self.pbx._later(lambda: self._key_in(keys))

    def _key_in(self, keys: str) -> None:
        # Received on the panel's channel, as DTMF from a trunk arrives: no 100 ms per digit
        # spent in the manager's thread, so concurrent calls do not wait on each other. One
        # digit at a time: Asterisk holds back a digit that comes within 45 ms of the last
        # one (AST_MIN_DTMF_GAP) until the next frame is read, and a Local channel without
        # media reads none, so GET DATA would time out with the digits still held.
        client = self._client
        # One prompt's digits after the other's, never interleaved.
        with self._keying:
            self._key_digits(client, keys)

    def _key_digits(self, client: EventClient, keys: str) -> None:
        for digit in keys:
            mark = client.mark()

            def keyed(event: Event, digit: str = digit) -> bool:
                return (
                    event.get("Event") == "DTMFEnd"
                    and event.get("Uniqueid") == self.uniqueid
                    and event.get("Digit") == digit
                )

            try:
                client.action(
                    "PlayDTMF", Channel=self.uniqueid, Digit=digit, Duration="80", Receive="true"
                )
                client.wait_for(keyed, 5.0, since=mark)
            except (ami.AmiError, PbxError, TimeoutError) as exc:
                self.errors.append(f"keying {digit} of {keys}: {exc}")
                return
            time.sleep(DTMF_GAP)

    # Actions -----------------------------------------------------------------------------------

    def hangup(self) -> None:
        """The caller hangs up now (the ;1 half, cause 16; the panel's channel follows).

        Nothing happens when the caller's phone is already down: timers set by
        ``hangup_after_answer`` may fire after the call ended by itself.
        """
        with self._client._cond:
            if self.caller_uniqueid in self._hung_up:
                return
        self.hung_up_by_caller = True
        try:
            self._client.action("Hangup", Channel=self.caller_uniqueid, Cause="16")
        except (ami.AmiError, PbxError, TimeoutError) as exc:
            self.errors.append(f"Hangup: {exc}")

    # Reading -----------------------------------------------------------------------------------

    def _snapshot(self) -> list[Event]:
        with self._client._cond:
            return list(self._events)

    @property
    def events(self) -> list[Event]:
        """All AMI events of the call's channels so far, in order (a copy).

        For assertions the helpers below do not cover; every event has Asterisk's
        Timestamp (see event_time()).
        """
        return self._snapshot()

    def _done(self) -> bool:
        if self.originate_response is None:
            return False
        # Both halves of the caller's Local channel, and every channel that joined the call.
        if self.originate_response.get("Response") == "Success" and not (
            {self.caller_uniqueid, self.uniqueid} <= self._hung_up.keys()
        ):
            return False
        return all(uniqueid in self._hung_up for uniqueid in self._channels)

    @property
    def done(self) -> bool:
        """Whether every channel of the call hung up (see wait_done)."""
        with self._client._cond:
            return self._done()

    def wait_done(self, timeout: float = 30.0) -> Call:
        """Wait until every channel of the call hung up, hangup handlers included.

        A channel's Hangup event comes after its hangup handlers ran, so the panel's settle
        has finished when this returns.
        """
        deadline = time.monotonic() + timeout
        cond = self._client._cond
        with cond:
            while not self._done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._client.alive:
                    break
                cond.wait(remaining)
            if self._done():
                return self
        why = "Asterisk's manager connection closed" if not self._client.alive else "timeout"
        raise TimeoutError(
            f"call {self.uniqueid} not over after {timeout} s ({why}): {self.describe()}\n"
            f"--- Asterisk log:\n{self.pbx.log()}"
        )

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """The first event of this call, past or future, that satisfies predicate.

        Past events count, so there is no race with the call; TimeoutError otherwise.
        """
        deadline = time.monotonic() + timeout
        cond = self._client._cond
        with cond:
            while True:
                for event in self._events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._client.alive:
                    raise TimeoutError(
                        f"call {self.uniqueid}: no matching event within {timeout} s: "
                        f"{self.describe()}"
                    )
                cond.wait(remaining)

    def wait_answered(self, timeout: float = 10.0) -> Event:
        """The DialEnd with DialStatus ANSWER on the panel's channel.

        That is the callee's answer, the moment the panel bills from (Dial's U() has run).
        """
        return self.wait_for(
            lambda e: (
                e.get("Event") == "DialEnd"
                and e.get("Uniqueid") == self.uniqueid
                and e.get("DialStatus") == "ANSWER"
            ),
            timeout,
        )

    def _panel(self, name: str) -> list[Event]:
        return [
            e
            for e in self._snapshot()
            if e.get("Event") == name and e.get("Uniqueid") == self.uniqueid
        ]

    def applications(self) -> list[tuple[str, str]]:
        """The panel channel's dialplan steps: (Application, AppData) of each Newexten.

        AppData is after variable substitution, so it shows what really ran.
        """
        return [(e.get("Application", ""), e.get("AppData", "")) for e in self._panel("Newexten")]

    def agi_commands(self) -> list[str]:
        """The AGI commands the FastAGI servers sent on the panel's channel, in order.

        From AGIExecStart events: what Asterisk received, hangup handler sessions included.
        """
        return [e.get("Command", "") for e in self._panel("AGIExecStart")]

    def agi_results(self) -> list[tuple[str, str, str]]:
        """(command, ResultCode, Result) of each AGI command on the panel's channel.

        Result is Asterisk's word (Success, Usage, ...), not the ``result=`` the script got;
        a 511 ResultCode means the channel was gone.
        """
        return [
            (e.get("Command", ""), e.get("ResultCode", ""), e.get("Result", ""))
            for e in self._panel("AGIExecEnd")
        ]

    def variable(self, name: str, uniqueid: str | None = None) -> str | None:
        """The last value set for a channel variable, on the panel's channel by default.

        From VarSet events, so it covers Set(), MSet() and the AGI's SET VARIABLE; None when
        the variable was never set. SHARED(), GLOBAL() and DB() raise no VarSet.
        """
        wanted = uniqueid or self.uniqueid
        value = None
        for event in self._snapshot():
            if (
                event.get("Event") == "VarSet"
                and event.get("Uniqueid") == wanted
                and event.get("Variable") == name
            ):
                value = event.get("Value", "")
        return value

    def prompts(self) -> list[str]:
        """Every file the call's channels were asked to play, in order.

        From Playback/Background/Read in the dialplan and STREAM FILE, GET DATA, GET OPTION
        and EXEC Playback from an AGI: the prompts the caller heard.
        """
        files: list[str] = []
        for event in self._snapshot():
            kind = event.get("Event")
            if kind == "Newexten" and event.get("Application", "").lower() in PLAYING_APPS:
                files += _first_file(event.get("AppData", ""))
            elif kind == "Newexten" and event.get("Application", "").lower() == "read":
                args = event.get("AppData", "").split(",")
                files += _first_file(args[1]) if len(args) > 1 else []
            elif kind == "AGIExecStart":
                command = event.get("Command", "")
                upper = command.upper()
                for verb in PLAYING_AGI:
                    if upper.startswith(verb):
                        rest = command[len(verb) :].split()
                        files += _first_file(rest[0]) if rest else []
                if upper.startswith("EXEC ") and len(command.split()) > 2:
                    app, app_data = command.split()[1], command.split(None, 2)[2]
                    if app.lower() in PLAYING_APPS:
                        files += _first_file(app_data)
        return files

    def played(self, name: str) -> bool:
        """Whether a channel of the call was asked to play ``name`` (``custom/x`` or ``x``).

        The panel's refusals are prompts, so this is how a test sees which one a caller got.
        """
        return any(_matches(played, name) for played in self.prompts())

    def dial_statuses(self) -> list[str]:
        """DialStatus of each Dial attempt the panel's channel finished, in order.

        One per trunk tried, so failover shows as e.g. ``["CONGESTION", "ANSWER"]``.
        """
        return [
            e.get("DialStatus", "")
            for e in self._panel("DialEnd")
            if e.get("DialStatus") not in ("", None)
        ]

    def hangup_cause(self, uniqueid: str | None = None) -> int | None:
        """The hangup cause of the panel's channel (or another of the call's); None if still up.

        Q.850 numbers: 16 normal, 17 busy, 19 no answer, 34 congestion, 3 no route.
        """
        with self._client._cond:
            event = self._hung_up.get(uniqueid or self.uniqueid)
        return int(event["Cause"]) if event and event.get("Cause", "").isdigit() else None

    def channels(self) -> dict[str, str]:
        """uniqueid -> channel name of every channel the call had, callees included."""
        with self._client._cond:
            return dict(self._channels)

    def describe(self) -> str:
        """A one-paragraph account of the call for assertion messages."""
        with self._client._cond:
            hung = sorted(self._hung_up)
            pending = sorted(set(self._channels) - set(self._hung_up))
            origin = self.originate_response
        steps = "; ".join(f"{app}({data})" for app, data in self.applications()[-15:])
        return (
            f"originate={origin.get('Response') if origin else None} prompts={self.prompts_seen} "
            f"keyed={self.digits_sent} agi={self.agi_commands()} dial={self.dial_statuses()} "
            f"hung_up={hung} still_up={pending} errors={self.errors} last_steps=[{steps}]"
        )


class Pbx:
    """A running Asterisk for tests, in a directory of its own; see the module docstring.

    Start it with start(); restart() after stop() or kill() brings it back on the same
    directory and ports, with its AstDB (astdb.sqlite3) as the last run left it.
    """

    def __init__(
        self,
        installation: Installation,
        workdir: Path,
        *,
        prompts: Iterable[str] = (),
        boot_timeout: float = 30.0,
    ) -> None:
        self.installation = installation
        self.workdir = workdir
        self.boot_timeout = boot_timeout
        self.etc = workdir / "etc"
        self.conf = self.etc / "asterisk.conf"
        self.data = workdir / "data"
        self.varlib = workdir / "lib"
        self.logdir = workdir / "log"
        self.rundir = self._run_dir(workdir)
        self.ami_port = free_port()
        self.ami_target = ami.AmiTarget(
            host="127.0.0.1", port=self.ami_port, username="harness", secret=secrets.token_hex(16)
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._ami: EventClient | None = None
        self._calls: dict[str, Call] = {}
        self._tokens = itertools.count(1)
        self._generation = 0
        self._prompts = set(PROMPTS)
        self._write_config()
        self.add_prompts(prompts)

    # Files -------------------------------------------------------------------------------------

    @staticmethod
    def _run_dir(workdir: Path) -> Path:
        wanted = workdir / "run"
        if len(str(wanted)) <= MAX_RUN_DIR:
            return wanted
        return Path(tempfile.mkdtemp(prefix="ast-run-"))

    def _write_config(self) -> None:
        for directory in (
            self.etc,
            self.data,
            self.varlib,
            self.logdir,
            self.logdir / "cdr-csv",
            self.rundir,
            self.workdir / "spool",
            self.workdir / "cache",
            self.data / "agi-bin",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        inst = self.installation
        w = self.workdir
        files = {
            "asterisk.conf": f"""\
[directories]
astetcdir => {self.etc}
astmoddir => {inst.moddir}
astvarlibdir => {self.varlib}
astdbdir => {self.varlib}
astkeydir => {self.varlib}
astdatadir => {self.data}
astagidir => {self.data / "agi-bin"}
astspooldir => {w / "spool"}
astrundir => {self.rundir}
astlogdir => {self.logdir}
astsbindir => {inst.prefix / "sbin"}
astcachedir => {w / "cache"}

[options]
verbose = 3
debug = 0
defaultlanguage = en
hideconnect = yes
""",
            # Only these modules: nothing else that could open a port or need configuration.
            "modules.conf": "[modules]\nautoload = no\n"
            + "".join(f"load => {module}.so\n" for module in MODULES),
            "manager.conf": f"""\
[general]
enabled = yes
webenabled = no
port = {self.ami_port}
bindaddr = 127.0.0.1
displayconnects = no
authtimeout = 10
; Every event carries Asterisk's own time (Timestamp: epoch seconds), for durations.
timestampevents = yes

[{self.ami_target.username}]
secret = {self.ami_target.secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = all
write = all
writetimeout = 5000
""",
            "http.conf": "[general]\nenabled = no\n",
            "logger.conf": """\
[general]
dateformat = %F %T.%3q

[logfiles]
messages => notice,warning,error
full => notice,warning,error,verbose,dtmf
""",
            # CDRs in log/cdr-csv/Master.csv, with each channel's uniqueid.
            "cdr.conf": "[general]\nenable = yes\n\n[csv]\nusegmtime = yes\nloguniqueid = yes\n",
            # Present, so that the log has no errors about their absence for tests to trip on.
            "cel.conf": "[general]\nenable = no\n",
            "ccss.conf": "[general]\n",
            "acl.conf": "",
            "udptl.conf": "[general]\n",
            "stasis.conf": "[threadpool]\n",
            "extensions_sim.conf": SIM_DIALPLAN,
        }
        for name, text in files.items():
            (self.etc / name).write_text(text)
        if not (self.etc / "extensions_panel.conf").exists():
            (self.etc / "extensions_panel.conf").write_text("; no panel dialplan loaded\n")
        for name in ("indications.conf", "features.conf"):
            shutil.copyfile(inst.samples / name, self.etc / name)
        self._write_extensions()

    def _write_extensions(self) -> None:
        # The generation context tells load_dialplan that its reload has been applied.
        (self.etc / "extensions.conf").write_text(
            "[general]\nstatic = yes\nwriteprotect = yes\nclearglobalvars = yes\n\n"
            "[globals]\n\n"
            f"[sim-generation]\nexten => {self._generation},1,NoOp(dialplan generation)\n\n"
            "#include extensions_sim.conf\n#include extensions_panel.conf\n"
        )

    def add_prompts(self, names: Iterable[str]) -> None:
        """Install silent prompts for these sound names (``custom/x``) besides PROMPTS.

        A missing sound makes Playback fail and GET DATA skip its prompt, which would hide
        what a test wants to see; silent ones play in 0.2 s.
        """
        self._prompts |= set(names)
        for name in sorted(self._prompts):
            if not PROMPT_NAME.fullmatch(name):
                raise ValueError(f"prompt name {name!r} does not match {PROMPT_NAME.pattern}")
            path = self.data / "sounds" / "en" / f"{name}.wav"
            if not path.exists():
                write_silence(path)

    @property
    def ami_url(self) -> str:
        """``ami://USER:SECRET@127.0.0.1:PORT`` of this Asterisk (for the panel's settings)."""
        t = self.ami_target
        return f"ami://{t.username}:{t.secret}@{t.host}:{t.port}"

    @property
    def astdb_path(self) -> Path:
        """Asterisk's database file (AstDB), which survives kill() and restart()."""
        return self.varlib / "astdb.sqlite3"

    # Process -----------------------------------------------------------------------------------

    @property
    def ami(self) -> EventClient:
        """The harness's manager session (events on); PbxError while Asterisk is down."""
        if self._ami is None:
            raise PbxError("Asterisk is not running (start() it first)")
        return self._ami

    def start(self) -> None:
        """Start Asterisk in the foreground as a child and wait until it is fully booted.

        Foreground (``-f``), in a session of its own: its lifetime is the test's, kill()
        reaches it, and nothing daemonises behind the test's back. Ready means the CLI's
        ``core waitfullybooted`` returned and the manager accepted the login.
        """
        if self.process is not None and self.process.poll() is None:
            raise PbxError("Asterisk is already running")
        (self.rundir / "asterisk.ctl").unlink(missing_ok=True)
        output = (self.logdir / "console.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.installation.asterisk), "-f", "-n", "-C", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Its own session: a test's Ctrl-C or process-group signal is not Asterisk's, and
            # kill() can take the whole group.
            start_new_session=True,
            cwd=self.workdir,
            env=asterisk_environment(),
        )
        output.close()
        deadline = time.monotonic() + self.boot_timeout
        while not (self.rundir / "asterisk.ctl").exists():
            self._check_alive("while starting")
            if time.monotonic() > deadline:
                raise PbxError(f"Asterisk made no control socket in time\n{self.log()}")
            time.sleep(0.05)
        self.cli("core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
        while True:
            try:
                self._ami = EventClient(self.ami_target)
                break
            except ami.AmiError as exc:
                self._check_alive("before its manager answered")
                if time.monotonic() > deadline:
                    raise PbxError(
                        f"Asterisk's manager does not answer: {exc}\n{self.log()}"
                    ) from None
                time.sleep(0.1)
        self._ami.subscribe(self._route)

    def _check_alive(self, when: str) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise PbxError(f"Asterisk exited ({code}) {when}\n{self.log()}")

    def _detach(self) -> None:
        if self._ami is not None:
            self._ami.close()
            self._ami = None

    def stop(self, timeout: float = 20.0) -> None:
        """Shut Asterisk down cleanly with ``core stop now``.

        Calls in progress are hung up and their hangup handlers run (the panel's settle AGI
        included), modules unload and AstDB is committed and closed.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.cli("core stop now", timeout=timeout)
            except PbxError:
                self.process.send_signal(signal.SIGTERM)
        self._detach()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PbxError(
                f"Asterisk did not stop within {timeout} s; killed\n{self.log()}"
            ) from None
        self.process = None

    def kill(self) -> None:
        """SIGKILL Asterisk, as a crash would.

        No hangup handler runs and nothing shuts down: AstDB keeps only what its background
        thread had committed (see db_committed()).
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._detach()
        self.process = None

    def restart(self) -> None:
        """Start again on the same directory and ports (after stop() or kill()).

        Same AMI port and secret, so a panel configured with ami_url reaches it again, and
        the same astdb.sqlite3, which is what crash recovery reads.
        """
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self.process = None
        self._calls.clear()
        self.start()

    def close(self) -> None:
        """Stop, and remove the run directory if it had to live outside the workdir.

        The control socket's path must fit in 108 bytes; a deep workdir gets a short run
        directory in /tmp, which is this object's to remove.
        """
        try:
            self.stop()
        finally:
            if not self.rundir.is_relative_to(self.workdir):
                shutil.rmtree(self.rundir, ignore_errors=True)

    def cli(self, command: str, *, timeout: float = 15.0) -> str:
        """Run a CLI command in the running Asterisk (``asterisk -rx``) and return its output.

        For what AMI has no action for (``dialplan reload``, ``dialplan show``); PbxError
        with the log's tail when it fails.
        """
        try:
            result = subprocess.run(
                [str(self.installation.asterisk), "-C", str(self.conf), "-rx", command],
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env=asterisk_environment(),
            )
        except subprocess.TimeoutExpired:
            raise PbxError(f"CLI {command!r} took over {timeout} s\n{self.log()}") from None
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise PbxError(
                f"CLI {command!r} failed ({result.returncode}): {output}"
                f"{result.stderr.decode(errors='replace')}\n{self.log()}"
            )
        return output

    def log(self, lines: int = 60) -> str:
        """The tail of Asterisk's full log, for assertion messages.

        The full log has every dialplan step and AGI connection, which is usually what
        explains a failed call.
        """
        path = self.logdir / "full"
        if not path.exists():
            path = self.logdir / "console.log"
        if not path.exists():
            return "(no log yet)"
        with path.open("rb") as source:
            source.seek(0, os.SEEK_END)
            source.seek(max(0, source.tell() - 200 * lines))
            text = source.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_mark(self) -> int:
        """A position in the full log, for log_since(): what a test's own calls logged."""
        path = self.logdir / "full"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, mark: int) -> str:
        """The full log from a log_mark() on.

        The session's Asterisk is shared, so a test that asserts on the log (no ERROR lines,
        a warning it expects) reads only its own part.
        """
        path = self.logdir / "full"
        if not path.exists():
            return ""
        with path.open("rb") as source:
            source.seek(mark)
            return source.read().decode(errors="replace")

    # Dialplan and database ---------------------------------------------------------------------

    def load_dialplan(self, text: str) -> None:
        """Make ``text`` the panel's dialplan (extensions_panel.conf) and reload it.

        Returns once Asterisk runs the new dialplan: the reload is checked through a
        generation counter, and every context the text names must exist.
        """
        (self.etc / "extensions_panel.conf").write_text(text)
        self._generation += 1
        self._write_extensions()
        self.cli("dialplan reload")
        deadline = time.monotonic() + 10
        while f"'{self._generation}' =>" not in self.cli("dialplan show sim-generation"):
            if time.monotonic() > deadline:
                raise PbxError(f"the dialplan reload did not take effect\n{self.log()}")
            time.sleep(0.05)
        for context in re.findall(r"^\s*\[([^\]\s]+)\]", text, flags=re.MULTILINE):
            if context in ("general", "globals"):
                continue
            shown = self.cli(f"dialplan show {context}")
            if f"[ Context '{context}'" not in shown:
                raise PbxError(f"context {context} did not load:\n{shown}\n{self.log()}")

    def db_put(self, family: str, key: str, value: str) -> None:
        """Write an AstDB entry through AMI (DBPut), as the dialplan's DB() would."""
        self.ami.action("DBPut", Family=family, Key=key, Val=value)

    def db_get(self, family: str, key: str) -> str | None:
        """An AstDB value, None when there is none (DBGet answers an error then)."""
        try:
            items = self.ami.action_list("DBGet", Family=family, Key=key)
        except ami.AmiError:
            return None
        return items[0].get("Val") if items else None

    def db_tree(self, family: str) -> dict[str, str]:
        """Every AstDB entry under ``family``: key (``/family/...``) -> value."""
        return {
            e.get("Key", ""): e.get("Val", "")
            for e in self.ami.action_list("DBGetTree", Family=family)
        }

    def db_clear(self, family: str) -> None:
        """Delete every entry under ``family``; an empty family is fine."""
        try:
            self.ami.action("DBDelTree", Family=family)
        except ami.AmiError as exc:
            if "not found" not in str(exc):
                raise

    def db_committed(self, family: str) -> dict[str, str]:
        """The AstDB entries under ``family`` that are on disk, i.e. would survive a crash.

        Asterisk commits AstDB writes from a background thread, at most once a second: a
        write can sit uncommitted for up to a second, and a kill() then loses it. A test that
        crashes Asterisk waits until this shows what it needs.
        """
        import sqlite3

        if not self.astdb_path.exists():
            return {}
        with sqlite3.connect(f"file:{self.astdb_path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "SELECT key, value FROM astdb WHERE key LIKE ? ESCAPE '\\'",
                (f"/{family}/%".replace("_", "\\_"),),
            ).fetchall()
        return {str(key): str(value) for key, value in rows}

    # Calls -------------------------------------------------------------------------------------

    def _route(self, event: Event) -> None:
        # In the reader thread, with the client's lock held: only bookkeeping here.
        linked = event.get("Linkedid") or event.get("LocalOneLinkedid") or ""
        call = self._calls.get(linked.removesuffix("-1").removeprefix("sim-"))
        if call is None and event.get("Event") == "OriginateResponse":
            call = next(
                (c for c in self._calls.values() if c.originate_id == event.get("ActionID")),
                None,
            )
        if call is not None and call._belongs(event):
            call._on_event(event)

    def _later(self, job: Callable[[], None]) -> None:
        # A thread per job: calls key in and hang up at the same time, as callers do, and the
        # reader thread (where this is called) must never wait for an answer itself.
        threading.Thread(target=job, name="sim-caller", daemon=True).start()

    def call(
        self,
        did: str,
        *,
        caller_id: str = "+4915112345678",
        context: str = "dialin",
        digits: Sequence[str] = (),
        terminator: str = "#",
        hangup_at: str | int | None = None,
        hangup_after_answer: float | None = None,
        hold: float | None = None,
        answer_after: float | None = None,
        give_up_after: float | None = None,
        variables: Mapping[str, str] | None = None,
        max_seconds: int = 300,
    ) -> Call:
        """Place one inbound call to ``did`` in ``context`` and return its handle at once.

        ``digits``: what the caller keys in at each prompt (GET DATA or Read), ``terminator``
        after each unless the digits fill the prompt's maximum; at a prompt past the list the
        caller keys nothing (the prompt times out). Returning at once lets a test place
        several calls and then wait for them: they run side by side.
        ``hangup_at``: hang up at that prompt instead (a sound name such as ``enter-pin``, or
        the 0-based index of the prompt). ``hangup_after_answer``: hang up that many seconds
        after a callee answered. ``hold``, ``answer_after``, ``give_up_after``: how the
        sim-answer and sim-ring callees of this call behave (inherited by Dial).
        ``variables``: more channel variables for the caller's channel (names with ``__``
        reach the callees). ``caller_id`` may be empty (withheld).
        """
        if not NUMBER.fullmatch(did):
            raise ValueError(f"DID {did!r} does not match {NUMBER.pattern}")
        if not CALLER_ID.fullmatch(caller_id):
            raise ValueError(f"caller ID {caller_id!r} does not match {CALLER_ID.pattern}")
        if not CONTEXT.fullmatch(context):
            raise ValueError(f"context {context!r} does not match {CONTEXT.pattern}")
        if any(not re.fullmatch(r"[0-9*#]*", d) for d in digits) or terminator not in ("", "#"):
            raise ValueError("digits are strings of 0-9, * and #; the terminator is # or ''")
        token = f"{os.getpid():x}{next(self._tokens):05d}{secrets.token_hex(2)}"
        call = Call(
            self,
            token,
            _Script(list(digits), terminator, hangup_at, hangup_after_answer),
        )
        settings = {
            "SIM_CALLER": caller_id,
            "SIM_CONTEXT": context,
            "SIM_MAX_SECONDS": str(max_seconds),
        }
        for name, seconds in (
            ("__SIM_HOLD", hold),
            ("__SIM_ANSWER_AFTER", answer_after),
            ("__SIM_GIVE_UP_AFTER", give_up_after),
        ):
            if seconds is not None:
                settings[name] = f"{seconds:g}"
        for name, value in (variables or {}).items():
            if not VARIABLE.fullmatch(name) or not re.fullmatch(r"[^,\r\n]*", value):
                raise ValueError(f"variable {name}={value!r} cannot be passed to Originate")
            settings[name] = value
        client = self.ami
        call.originate_id = client.new_action_id()
        with client._cond:
            self._calls[token] = call
        client._send(
            "Originate",
            {
                "Channel": f"Local/{did}@sim-inbound/n",
                "Context": "sim-caller",
                "Exten": "s",
                "Priority": "1",
                "Async": "true",
                "Timeout": str(max_seconds * 1000),
                "CallerID": f'"sim" <{caller_id}>' if caller_id else "",
                "ChannelId": call.caller_uniqueid,
                "OtherChannelId": call.uniqueid,
                "Variable": [f"{name}={value}" for name, value in settings.items()],
            },
            listing=False,
            action_id=call.originate_id,
        )
        client._await("Originate", call.originate_id, client.timeout)
        return call

    def calls(self) -> list[Call]:
        """The calls placed since the last reset()."""
        return list(self._calls.values())

    def channels(self) -> list[Event]:
        """The channels up now (CoreShowChannels items: Channel, Uniqueid, Application, ...)."""
        return self.ami.action_list("CoreShowChannels")

    def hangup_all(self, timeout: float = 15.0) -> None:
        """Hang up every channel and wait until none is left (hangup handlers finished).

        A channel in an AGI whose server holds the connection without a word does not go
        away: Asterisk waits for the server even after the hangup. PbxError names it.
        """
        deadline = time.monotonic() + timeout
        while self.channels():
            self.cli("channel request hangup all")
            if time.monotonic() > deadline:
                raise PbxError(
                    f"channels left after {timeout} s (in AGI: its FastAGI server holds on): "
                    f"{[(c.get('Channel'), c.get('Application')) for c in self.channels()]}\n"
                    f"{self.log()}"
                )
            time.sleep(0.1)

    def reset(self) -> None:
        """Between tests: no channels, an empty panel dialplan, AstDB family ``panel`` cleared.

        The shared Asterisk then behaves for the next test as a fresh one would, without the
        second it takes to restart.
        """
        self.hangup_all()
        self.load_dialplan("; no panel dialplan loaded\n")
        self.db_clear("panel")
        with self.ami._cond:
            self._calls.clear()

    def listening(self) -> list[tuple[str, int]]:
        """The (address, port) TCP sockets the Asterisk process listens on.

        Read from /proc (the process's socket inodes against /proc/net/tcp and tcp6), so it
        needs no ss or netstat.
        """
        if self.process is None:
            return []
        inodes = set()
        fd_dir = Path(f"/proc/{self.process.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        found = []
        for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                address, port = fields[1].split(":")
                found.append((_proc_address(address, v6), int(port, 16)))
        return found


def _proc_address(hex_address: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net shows the address as 32-bit words in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, words)


def event_time(event: Event) -> float:
    """When Asterisk raised the event (its Timestamp header, epoch seconds)."""
    return float(event["Timestamp"])


def describe_events(events: Sequence[Event], keys: Sequence[str] = ()) -> str:
    """Events as short lines (name, channel and chosen keys) for assertion messages."""
    out = []
    for event in events:
        extra = " ".join(f"{k}={event.get(k)}" for k in keys if k in event)
        out.append(f"{event.get('Event')} {event.get('Channel', '')} {extra}".rstrip())
    return "\n".join(out)
