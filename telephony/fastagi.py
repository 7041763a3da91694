"""The FastAGI server: Asterisk connects for ``/authorize`` before Dial and ``/settle`` after.

pyst2's own fastagi module is Python 2 only, so the socket server is written here. An
authorize session lasts as long as the caller takes to key in a number or a PIN: seconds,
most of it waiting. So each session has a thread of its own, and the sessions share a few
database connections that stay open (a connection per session would mean hundreds, and
opening one costs more than a call's queries), borrowing one for each step. The rates of the
decks in force are held in memory (``telephony.ratecache``), and so are the callers
identified before (``telephony.callers``).

What arrives on the port is not trusted: only the Asterisk nodes (``FASTAGI_ALLOW``) may
connect, each up to a number of sessions; the environment must arrive whole within seconds
and within bounds; a settle carries the token its call was given at authorize. Settles have
slots of their own, so that a hangup never waits behind callers keying in PINs. Every
database step has a deadline (lock and statement timeouts, a bounded wait for a
connection): a blocked database gives the caller a "try again later" prompt, not silence.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import queue
import re
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from panel.models import Membership, MembershipStatus, User
from telephony import pins, services
from telephony.agi import AgiError, ChannelGone, Session, SocketLines
from telephony.callers import CallerCache
from telephony.models import AccessNumber, CallRecord, SettledBy
from telephony.ratecache import RateCache

log = logging.getLogger(__name__)
# One line per session, for operators: who called where, what was decided, why, how fast.
sessions_log = logging.getLogger("telephony.sessions")

UNIQUEID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
EPOCH = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
NODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TOKEN = re.compile(r"^[0-9a-f]{1,64}$")
TRIES = 3


def _epoch(text: str) -> Decimal | None:
    if not EPOCH.match(text or ""):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


T = TypeVar("T")
# Runs a function on a borrowed database connection and returns what it returned.
Db = Callable[..., Any]


class Unavailable(Exception):
    """No database connection was free in time: the database is blocked or overloaded."""


def _caller(
    number: str, raw_caller: str, callers: CallerCache
) -> tuple[AccessNumber | None, str, Any]:
    """The access number called, the caller as E.164 and its phone (one database step);
    the phone is kept for the next calls if it may be."""
    generation = callers.generation
    access = services.access_number(number)
    if access is None:
        return None, "", None
    caller = services.caller_e164(raw_caller, access.country)
    phone = services.identify(caller) if caller else None
    if caller:
        callers.fill(caller, phone, generation)
    return access, caller, phone


def authorize(session: Session, server: Server, info: dict[str, Any]) -> str:
    """Identify the caller, read the destination, decide, and tell the dialplan."""
    db = server.database.run
    env = session.env
    uniqueid = env.get("agi_uniqueid", "")
    raw_caller = env.get("agi_callerid", "")
    number = env.get("agi_arg_1", "")
    node = env.get("agi_arg_3", "")
    node = node if NODE.match(node) else ""
    query = env.get("agi_network_script", "").partition("?")[2]
    is_check = "check=1" in query.split("&")
    info.update(uniqueid=uniqueid, caller=raw_caller[:40], access=number[:20], node=node)
    if not UNIQUEID.match(uniqueid):
        session.set("AUTH_RESULT", "REFUSED")
        info["uniqueid"] = uniqueid[:70]
        return _decided(info, "refused", "bad uniqueid")
    # A known caller on a known access number costs no round trip before the first prompt.
    access = services.access_number_known(number)
    caller = services.caller_e164(raw_caller, access.country) if access is not None else ""
    phone = server.callers.get(caller) if caller else None
    if phone is None:
        access, caller, phone = db(_caller, number, raw_caller, server.callers)
    record: dict[str, Any] = {
        "caller": caller or raw_caller,
        "access": access,
        "node": node,
        "check": is_check,
    }
    info.update(record=record, stage="identify")
    if access is None:
        return _refusal(
            session, db, info, uniqueid, "unknown access number", "custom/unknown-access"
        )
    member = None  # the dialplan answered the call before it asked us
    if phone is not None and phone.verified_at is not None:
        member = phone.member
    elif phone is not None and phone.verification_code:
        info["stage"] = "verification code"
        for _ in range(TRIES):
            code = session.read_digits("custom/enter-code", timeout_ms=7000, max_digits=6)
            if db(services.verify_phone, phone=phone, code=code):
                session.stream("custom/phone-verified")
                member = phone.member
                break
    if member is None:
        info["stage"] = "PIN"
        member, reason = _by_pin(session, server, phone, caller or raw_caller)
        if member is None:
            return _refusal(session, db, info, uniqueid, reason, "custom/goodbye")
    info["member"] = member.pk
    record["member"] = member
    # Fetched with the phone when the caller ID identified the member (no query here).
    membership = (
        getattr(member, "membership", None) if member == getattr(phone, "member", None) else None
    )
    if membership is None:
        membership = db(Membership.objects.filter(user=member).first)
    if membership is None or membership.status != MembershipStatus.MEMBER:
        return _refusal(
            session, db, info, uniqueid, "not a member in good standing", "custom/goodbye"
        )
    info["stage"] = "destination"
    dest = None
    for attempt in range(TRIES):
        digits = session.read_digits("custom/enter-number", timeout_ms=7000, max_digits=20)
        dest = db(
            services.destination,
            digits=digits,
            region=access.country,
            rate_lookup=server.rates.lookup,
        )
        if not dest.retry or attempt == TRIES - 1:
            break
        # A typo, most likely: say so and let the caller key the number again.
        session.stream(dest.prompt)
    assert dest is not None  # noqa: S101  (TRIES > 0)
    info["destination"] = dest.e164 or dest.digits[:20]
    decision = db(
        services.call_authorize,
        uniqueid=uniqueid,
        member=member,
        caller=caller or raw_caller,
        access_number=access,
        dest=dest,
        node=node,
        is_check=is_check,
        rate_lookup=server.rates.lookup,
    )
    info["stage"] = "decided"
    if not decision.ok:
        with contextlib.suppress(ChannelGone):
            session.stream(decision.prompt or "custom/goodbye")
        session.set("AUTH_RESULT", "REFUSED")
        session.set("AUTH_REASON", decision.reason[:80].replace('"', "'"))
        return _decided(info, "refused", decision.reason)
    # One command for all of them: each command is a round trip the caller waits for.
    values = {
        **{f"DIAL_STRING_{n}": dial for n, dial in enumerate(decision.dial_strings, start=1)},
        **{f"LIMIT_MS_{n}": str(limit * 1000) for n, limit in enumerate(decision.limits, start=1)},
        "DIAL_COUNT": str(len(decision.dial_strings)),
        "SETTLE_TOKEN": services.settle_token(uniqueid),
        "AUTH_RESULT": "OK",
    }
    try:
        session.set_many(values)
    except ChannelGone:
        # Gone before the dialplan heard the answer: its hangup handler will settle nothing,
        # so the hold is freed here, now.
        db(
            services.call_settle,
            uniqueid=uniqueid,
            dial_status="ABANDONED",
            answered_at=None,
            ended_at=None,
            settled_by=SettledBy.SERVER,
        )
        raise
    return _decided(info, "authorized", f"{decision.limit_seconds}s")


def _by_pin(session: Session, server: Server, phone: Any, caller: str) -> tuple[User | None, str]:
    """Account (unless the phone says whose it is) and PIN, three tries, locks across calls.

    The hash is checked off the database connection: it is the slow part, and the other
    calls' steps must not wait behind it. An unknown account is checked against a dummy hash
    and counted like a known one, so that it answers in the same time.
    """
    db = server.database.run
    for _ in range(TRIES):
        account = ""
        if phone is None:
            account = session.read_digits("custom/enter-account", timeout_ms=7000, max_digits=12)
        pin = session.read_digits("custom/enter-pin", timeout_ms=7000, max_digits=8)
        candidate = db(
            services.pin_candidate,
            account=account,
            member=phone.member if phone is not None else None,
            caller=caller,
        )
        if candidate.locked:
            with contextlib.suppress(ChannelGone):
                session.stream("custom/pin-locked")
            return None, "locked after wrong PINs"
        right, rehash = pins.pin_check(pin, candidate.pin_hash)
        right = right and candidate.member is not None
        db(services.pin_outcome, candidate=candidate, pin=pin, right=right, rehash=rehash)
        if right:
            return candidate.member, ""
        session.stream("custom/pin-wrong")
    return None, "caller not identified (PIN)"


def _decided(info: dict[str, Any], decision: str, reason: str) -> str:
    info.update(decision=decision, reason=reason)
    return f"{decision}: {reason}" if reason else decision


def _refusal(
    session: Session, db: Db, info: dict[str, Any], uniqueid: str, reason: str, prompt: str
) -> str:
    record = info.get("record", {})
    db(
        CallRecord.objects.get_or_create,
        uniqueid=uniqueid,
        defaults={
            "state": "refused",
            "refusal": reason,
            "caller": str(record.get("caller", ""))[:32],
            "access_number": record.get("access"),
            "member": record.get("member"),
            "node": record.get("node", ""),
            "is_check": record.get("check", False),
        },
    )
    info["stage"] = "decided"
    with contextlib.suppress(ChannelGone):
        session.stream(prompt)
    session.set("AUTH_RESULT", "REFUSED")
    session.set("AUTH_REASON", reason[:80])
    return _decided(info, "refused", reason)


def _try_later(session: Session, info: dict[str, Any], why: str) -> str:
    """The database did not answer in time: tell the caller, hold nothing."""
    with contextlib.suppress(AgiError):
        session.stream("custom/try-later")
        session.set("AUTH_RESULT", "REFUSED")
        session.set("AUTH_REASON", "try again later")
    info["stage"] = "decided"
    return _decided(info, "unavailable", why)


def settle(session: Session, server: Server, info: dict[str, Any]) -> str:
    """From the hangup handler: DIALSTATUS, the callee's answer time, the end time, the trunk
    tried last and the call's token. SETTLED=OK tells the dialplan it is done."""
    db = server.database.run
    env = session.env
    uniqueid = env.get("agi_uniqueid", "")
    info["uniqueid"] = uniqueid[:70]
    if not UNIQUEID.match(uniqueid):
        return _decided(info, "refused", "bad uniqueid")
    token = env.get("agi_arg_5", "")
    if not TOKEN.match(token) or not services.settle_token_valid(uniqueid, token):
        session.set("SETTLED", "REFUSED")
        log.warning("FastAGI: settle of %s with a wrong token refused", uniqueid)
        return _decided(info, "refused", "wrong settle token")
    status = re.sub(r"[^A-Z]", "", env.get("agi_arg_1", ""))[:20]
    route = env.get("agi_arg_4", "")
    try:
        call = db(
            services.call_settle,
            uniqueid=uniqueid,
            dial_status=status,
            answered_at=_epoch(env.get("agi_arg_2", "")),
            ended_at=_epoch(env.get("agi_arg_3", "")),
            route=int(route) if route.isdigit() and len(route) < 3 else 1,
        )
    except CallRecord.DoesNotExist:
        session.set("SETTLED", "UNKNOWN")
        return _decided(info, "refused", "no such call")
    session.set("SETTLED", "OK")
    info["member"] = call.member_id
    return _decided(info, "settled", f"{call.billed_seconds}s, {call.cost}")


ROUTES = {"authorize": authorize, "settle": settle}


class Database:
    """A few database connections, lent in turn to the session threads for their queries.

    A session thread borrows one for each step (one service call, one transaction as
    everywhere else) and runs the step itself: handing the step to a thread that owns a
    connection, as this server did before, cost two thread wake-ups per step, about a tenth
    of a call setup. While a thread holds the connection it is that thread's ``connection``
    (Django's per-thread handle, set for the step and removed after); Django's thread check
    is relaxed for these connections only, and only one thread uses one at a time. A step
    waits for a free connection at most ``wait_s``. The connections are kept from one step
    to the next (opening one costs more than a call's queries); one that failed, or was
    left inside a transaction, is closed and reopened by its next step. On PostgreSQL every
    statement has ``statement_timeout_ms`` and every lock ``lock_timeout_ms``: a caller
    waiting on a blocked row hears "try again later" instead of silence.
    """

    def __init__(
        self,
        connections_: int,
        *,
        wait_s: float = 0.5,
        lock_timeout_ms: int = 800,
        statement_timeout_ms: int = 1200,
    ) -> None:
        self.wait_s = wait_s
        self.free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.all = []
        # Closed when the server stops: a step still running then closes its connection when
        # it ends (closing it under the step would only have it reopened, and kept).
        self.closed = False
        self._closing = threading.Lock()
        for _ in range(connections_):
            db = connections.create_connection(DEFAULT_DB_ALIAS)
            db.inc_thread_sharing()
            settings_dict = dict(db.settings_dict)
            # Django's default CONN_MAX_AGE (0) is meant for web requests: it would close
            # the connection after every step. A configured age still applies.
            if settings_dict.get("CONN_MAX_AGE") == 0:
                settings_dict["CONN_MAX_AGE"] = None
            if db.vendor == "postgresql":
                options = dict(settings_dict.get("OPTIONS") or {})
                limits = (
                    f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms}"
                )
                options["options"] = f"{options.get('options', '')} {limits}".strip()
                options.setdefault("connect_timeout", 2)
                settings_dict["OPTIONS"] = options
            db.settings_dict = settings_dict
            self.all.append(db)
            self.free.put(db)

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.closed:
            raise Unavailable("the server is stopping")
        try:
            db = self.free.get(timeout=self.wait_s)
        except queue.Empty:
            raise Unavailable(f"no database connection free within {self.wait_s}s") from None
        connections[DEFAULT_DB_ALIAS] = db
        try:
            db.close_if_unusable_or_obsolete()
            return function(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, DatabaseError) or db.in_atomic_block:
                db.close()  # whatever state it is in, the next step starts clean
            raise
        finally:
            del connections[DEFAULT_DB_ALIAS]
            with self._closing:
                if self.closed:
                    db.close()
                else:
                    self.free.put(db)

    def close(self) -> None:
        """Close the connections not lent; those lent close when their step ends."""
        with self._closing:
            self.closed = True
            while True:
                try:
                    db = self.free.get_nowait()
                except queue.Empty:
                    return
                db.close()


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        started = time.monotonic()
        # One short line each way per command: without this, Nagle's algorithm and delayed
        # ACKs stall every exchange by tens of milliseconds.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        info: dict[str, Any] = {"peer": self.client_address[0], "script": "?"}
        outcome = "?"
        slot = None
        try:
            session = Session(
                SocketLines(self.request, timeout=self.server.read_timeout), self.wfile
            )
            script = session.env.get("agi_network_script", "").split("?", 1)[0].strip("/")
            info["script"] = script[:20]
            route = ROUTES.get(script)
            if route is None:
                outcome = _decided(info, "refused", f"unknown script {script[:20]!r}")
                return
            slot = self.server.slots[script]
            # A settle waits a little for a slot: with the other server restarting, all of the
            # dialplan's attempts come here within milliseconds. An authorize does not: the
            # dialplan has another server for it, and the caller is waiting.
            wait = self.server.settle_wait_s if script == "settle" else 0.0
            taken = slot.acquire(timeout=wait) if wait else slot.acquire(blocking=False)
            if not taken:
                # Closed without a decision: the dialplan tries the next server.
                slot = None
                outcome = _decided(info, "busy", f"all {script} sessions taken")
                log.warning("FastAGI: all %s sessions taken, closing %s", script, info["peer"])
                return
            try:
                outcome = route(session, self.server, info)
            except (DatabaseError, Unavailable) as exc:
                why = f"database: {str(exc)[:120]}"
                if script == "authorize":
                    log.warning("FastAGI: database step failed, caller told to try later: %s", exc)
                    outcome = _try_later(session, info, why)
                else:
                    # Not acknowledged: the dialplan tries the next server, and what it kept in
                    # Asterisk's database is settled by the reconciliation otherwise.
                    log.warning("FastAGI: settle not taken, the database failed: %s", exc)
                    outcome = _decided(info, "unavailable", why)
        except ChannelGone as exc:
            if info["script"] == "?":
                # Closed before a whole environment arrived: nobody called, nothing to record.
                outcome = _decided(info, "no environment", str(exc))
            else:
                outcome = _decided(info, info.get("decision", "abandoned"), f"caller gone: {exc}")
                self._abandoned(info)
        except AgiError as exc:
            kind = "permanent" if exc.permanent else "transient"
            outcome = _decided(info, "error", f"AGI error ({kind}): {exc}")
            log.warning(outcome)
        except Exception:
            log.exception("FastAGI session failed")
            outcome = _decided(info, "error", "exception")
        finally:
            if slot is not None:
                slot.release()
            info["ms"] = round((time.monotonic() - started) * 1000, 1)
            info.pop("record", None)
            if info.get("stage") == "decided":
                del info["stage"]
            sessions_log.info(json.dumps(info, default=str, sort_keys=True))
            self.server.outcomes.append(outcome)
            del self.server.outcomes[:-1000]

    def _abandoned(self, info: dict[str, Any]) -> None:
        """A caller who hung up before the decision leaves a record saying where."""
        stage = info.get("stage")
        if info.get("script") != "authorize" or stage in (None, "decided"):
            return
        record = info.get("record", {})
        info["decision"] = "abandoned"
        try:
            self.server.database.run(
                services.call_abandoned,
                uniqueid=info["uniqueid"],
                reason=f"hung up at the {stage} prompt",
                caller=str(record.get("caller", "")),
                access_number=record.get("access"),
                member=record.get("member"),
                node=record.get("node", ""),
                is_check=record.get("check", False),
            )
        except (DatabaseError, Unavailable) as exc:
            log.warning("FastAGI: could not record the abandoned call: %s", exc)


class Server(socketserver.TCPServer):
    """A thread per session, sharing ``db_connections`` database connections.

    Only peers in ``allow`` may connect, each with at most ``max_per_peer`` connections;
    others are closed at once. Up to ``max_sessions`` authorize sessions and, apart from
    them, ``settle_sessions`` settles; a connection over that is closed without a decision
    (the dialplan tries the next server, or says "try again later"). On PostgreSQL one more
    connection, of the caller cache's thread, listens for changes to phones, memberships and
    call plans (``telephony.callers``). ``drain`` stops it without cutting calls.
    """

    allow_reuse_address = True
    request_queue_size = 256  # a burst of calls must queue, not be reset

    def __init__(
        self,
        address: tuple[str, int],
        *,
        max_sessions: int = 64,
        settle_sessions: int = 16,
        max_per_peer: int = 80,
        allow: Iterable[str] = ("127.0.0.0/8", "::1/128"),
        read_timeout: float = 30.0,
        db_connections: int = 4,
        db_wait_s: float = 0.5,
        lock_timeout_ms: int = 800,
        statement_timeout_ms: int = 1200,
        settle_wait_s: float = 2.0,
        listen: bool = True,
    ) -> None:
        self.read_timeout = read_timeout
        self.settle_wait_s = settle_wait_s
        self.outcomes: list[str] = []
        self.allow = [ipaddress.ip_network(network, strict=False) for network in allow]
        self.max_per_peer = max_per_peer
        self.peers: Counter[str] = Counter()
        self.peers_lock = threading.Lock()
        # Connections still sending their environment count here, so that a flood of them
        # cannot hold a thread each without bound.
        self.connections = threading.BoundedSemaphore(max_sessions + settle_sessions)
        self.slots = {
            "authorize": threading.BoundedSemaphore(max_sessions),
            "settle": threading.BoundedSemaphore(settle_sessions),
        }
        self.live: set[socket.socket] = set()
        self.sessions = ThreadPoolExecutor(
            max_workers=max_sessions + settle_sessions, thread_name_prefix="fastagi"
        )
        self.database = Database(
            db_connections,
            wait_s=db_wait_s,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        )
        self.rates = RateCache(self.database.run)
        self.callers = CallerCache()
        self.accepting = True
        # Bound at once (the port is ours), listening only when asked: a server that accepts
        # calls before its rates are loaded keeps callers in silence for a second or two,
        # where a refused connection sends them to the other server at once.
        super().__init__(address, Handler, bind_and_activate=False)
        try:
            self.server_bind()
            if listen:
                self.server_activate()
        except BaseException:
            self.server_close()
            raise
        self.callers.start()

    def warm(self, timeout: float = 60.0) -> None:
        """Load the rates of the decks in force, and listen for caller changes, before the
        first call. Without it the first calls after a start ask the database for both."""
        try:
            routes = self.database.run(services.routes)
        except (DatabaseError, Unavailable):
            log.exception("FastAGI: the rates stay in the database for now")
            return
        for thread in self.rates.load_later([deck.pk for _trunk, deck in routes if deck]):
            thread.join(timeout)
        self.callers.ready(timeout)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        peer = str(client_address[0])
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not any(address in network for network in self.allow):
            log.warning("FastAGI: %s is not in FASTAGI_ALLOW, closed", peer)
            return False
        with self.peers_lock:
            if self.peers[peer] >= self.max_per_peer:
                log.warning("FastAGI: %s has %d sessions already, closed", peer, self.max_per_peer)
                return False
            self.peers[peer] += 1
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            log.warning("FastAGI: too many connections, refusing %s", client_address)
            self._forget_peer(client_address)
            self.shutdown_request(request)
            return
        self.sessions.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        with self.peers_lock:
            self.live.add(request)
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self.peers_lock:
                self.live.discard(request)
            self._forget_peer(client_address)
            self.shutdown_request(request)
            self.connections.release()

    def _forget_peer(self, client_address: Any) -> None:
        peer = str(client_address[0])
        with self.peers_lock:
            self.peers[peer] -= 1
            if self.peers[peer] <= 0:
                del self.peers[peer]

    def drain(self, seconds: float) -> int:
        """Stop taking calls and let the sessions in progress finish; the number cut.

        Called from another thread than serve_forever's. The listening socket closes at
        once, so Asterisk's next connection is refused and the dialplan goes to the other
        server; sessions still running after ``seconds`` are cut (an authorize cut without
        a decision is retried on the other server, a settle is kept by Asterisk and
        reconciled).
        """
        self.accepting = False
        self.shutdown()
        self.socket.close()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.peers_lock:
                if not self.live:
                    return 0
            time.sleep(0.05)
        with self.peers_lock:
            cut = list(self.live)
        for request in cut:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)
        return len(cut)

    def server_close(self) -> None:
        super().server_close()
        self.sessions.shutdown(wait=False, cancel_futures=True)
        self.callers.stop()
        self.database.close()
