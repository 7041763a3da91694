"""The FastAGI server: Asterisk connects for ``/authorize`` before Dial and ``/settle`` after.

pyst2's own fastagi module is Python 2 only, so the socket server is written here. An
authorize session lasts as long as the caller takes to key in a number or a PIN: seconds,
most of it waiting. So each session has a thread of its own (up to ``max_sessions``; over
that, a connection is closed at once and the dialplan's AGISTATUS says FAILURE), and the
sessions share a few database connections that stay open (a connection per session would
mean hundreds, and opening one costs more than a call's queries), borrowing one for each
step. The rates of the decks in force are held in memory (``telephony.ratecache``), and so
are the callers identified before (``telephony.callers``). Every read has a timeout.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from panel.models import Membership, MembershipStatus
from telephony import services
from telephony.agi import AgiError, ChannelGone, Session
from telephony.callers import CallerCache
from telephony.models import AccessNumber, CallRecord, CallState
from telephony.ratecache import RateCache

log = logging.getLogger(__name__)
UNIQUEID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
EPOCH = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
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


def _caller(number: str, caller: str, callers: CallerCache) -> tuple[AccessNumber | None, Any]:
    """The access number called and the phone calling (one database step); the phone is
    kept for the next calls if it may be."""
    generation = callers.generation
    access = services.access_number(number)
    phone = services.identify(caller) if access is not None else None
    callers.fill(caller, phone, generation)
    return access, phone


def authorize(session: Session, server: Server) -> str:
    """Identify the caller, read the destination, decide, and tell the dialplan."""
    db = server.database.run
    env = session.env
    uniqueid = env.get("agi_uniqueid", "")
    if not UNIQUEID.match(uniqueid):
        session.set("AUTH_RESULT", "REFUSED")
        return f"refused: bad uniqueid {uniqueid!r}"
    caller = env.get("agi_callerid", "")
    number = env.get("agi_arg_1", "")
    # A known caller on a known access number costs no round trip before the first prompt.
    phone = server.callers.get(caller)
    access = services.access_number_known(number) if phone is not None else None
    if access is None:
        access, phone = db(_caller, number, caller, server.callers)
    if access is None:
        return _refusal(session, db, uniqueid, "unknown access number", "custom/unknown-access")
    member = None  # the dialplan answered the call before it asked us
    if phone is not None and phone.verified_at is not None:
        member = phone.member
    elif phone is not None and phone.verification_code:
        for _ in range(TRIES):
            code = session.read_digits("custom/enter-code", timeout_ms=7000, max_digits=6)
            if db(services.verify_phone, phone=phone, code=code):
                session.stream("custom/phone-verified")
                member = phone.member
                break
    if member is None:
        for _ in range(TRIES):
            if phone is not None:
                candidate, pin = (
                    phone.member,
                    session.read_digits("custom/enter-pin", timeout_ms=7000, max_digits=8),
                )
                if db(services.check_pin, candidate, pin):
                    member = candidate
                    break
            else:
                account = session.read_digits(
                    "custom/enter-account", timeout_ms=7000, max_digits=12
                )
                pin = session.read_digits("custom/enter-pin", timeout_ms=7000, max_digits=8)
                member = db(services.member_by_account, account, pin)
                if member is not None:
                    break
            session.stream("custom/pin-wrong")
        if member is None:
            return _refusal(
                session,
                db,
                uniqueid,
                "caller not identified (PIN)",
                "custom/goodbye",
                caller=caller,
                access=access,
            )
    # Fetched with the phone when the caller ID identified the member (no query here).
    membership = (
        getattr(member, "membership", None) if member == getattr(phone, "member", None) else None
    )
    if membership is None:
        membership = db(Membership.objects.filter(user=member).first)
    if membership is None or membership.status != MembershipStatus.MEMBER:
        return _refusal(
            session,
            db,
            uniqueid,
            "not a member in good standing",
            "custom/goodbye",
            caller=caller,
            access=access,
        )
    digits = ""
    for _ in range(TRIES):
        digits = session.read_digits("custom/enter-number", timeout_ms=7000, max_digits=20)
        if digits.isdigit() and len(digits) >= 3:
            break
        session.stream("custom/invalid-number")
    decision = db(
        services.call_authorize,
        uniqueid=uniqueid,
        member=member,
        caller=caller,
        access_number=access,
        digits=digits,
        rate_lookup=server.rates.lookup,
    )
    if not decision.ok:
        session.stream(decision.prompt or "custom/goodbye")
        session.set("AUTH_RESULT", "REFUSED")
        session.set("AUTH_REASON", decision.reason[:80].replace('"', "'"))
        return f"refused: {decision.reason}"
    # One command for all of them: each command is a round trip the caller waits for.
    session.set_many(
        {
            **{f"DIAL_STRING_{n}": dial for n, dial in enumerate(decision.dial_strings, start=1)},
            "DIAL_COUNT": str(len(decision.dial_strings)),
            "LIMIT_MS": str(decision.limit_seconds * 1000),
            "AUTH_RESULT": "OK",
        }
    )
    destination = decision.call.destination if decision.call else ""
    return f"authorized {destination} for {decision.limit_seconds}s"


def _refusal(
    session: Session,
    db: Db,
    uniqueid: str,
    reason: str,
    prompt: str,
    *,
    caller: str = "",
    access: AccessNumber | None = None,
) -> str:
    db(
        CallRecord.objects.get_or_create,
        uniqueid=uniqueid,
        defaults={
            "state": CallState.REFUSED,
            "refusal": reason,
            "caller": caller[:32],
            "access_number": access,
        },
    )
    log.info("call %s refused: %s", uniqueid, reason)
    with contextlib.suppress(ChannelGone):
        session.stream(prompt)
    session.set("AUTH_RESULT", "REFUSED")
    session.set("AUTH_REASON", reason[:80])
    return f"refused: {reason}"


def settle(session: Session, server: Server) -> str:
    """From the hangup handler: DIALSTATUS, the callee's answer time, the end time."""
    db = server.database.run
    uniqueid = session.env.get("agi_uniqueid", "")
    if not UNIQUEID.match(uniqueid):
        return f"nothing to settle for {uniqueid!r}"
    status = re.sub(r"[^A-Z]", "", session.env.get("agi_arg_1", ""))[:20]
    try:
        call = db(
            services.call_settle,
            uniqueid=uniqueid,
            dial_status=status,
            answered_at=_epoch(session.env.get("agi_arg_2", "")),
            ended_at=_epoch(session.env.get("agi_arg_3", "")),
        )
    except CallRecord.DoesNotExist:
        return f"nothing to settle for {uniqueid!r}"  # refused before a record, or not ours
    return f"settled {uniqueid}: {call.billed_seconds}s, {call.cost}"


ROUTES = {"authorize": authorize, "settle": settle}


class Database:
    """A few database connections, lent in turn to the session threads for their queries.

    A session thread borrows one for each step (one service call, one transaction as
    everywhere else) and runs the step itself: handing the step to a thread that owns a
    connection, as this server did before, cost two thread wake-ups per step, about a tenth
    of a call setup. While a thread holds the connection it is that thread's ``connection``
    (Django's per-thread handle, set for the step and removed after); Django's thread check
    is relaxed for these connections only, and only one thread uses one at a time. A step
    waits when all are lent. The connections are kept from one step to the next (opening
    one costs more than a call's queries); one that failed, or was left inside a
    transaction, is closed and reopened by its next step. Closing closes them all.
    """

    def __init__(self, connections_: int) -> None:
        self.free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.all = []
        for _ in range(connections_):
            db = connections.create_connection(DEFAULT_DB_ALIAS)
            db.inc_thread_sharing()
            # Django's default CONN_MAX_AGE (0) is meant for web requests: it would close
            # the connection after every step. A configured age still applies.
            if db.settings_dict.get("CONN_MAX_AGE") == 0:
                db.settings_dict = {**db.settings_dict, "CONN_MAX_AGE": None}
            self.all.append(db)
            self.free.put(db)

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        db = self.free.get()
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
            self.free.put(db)

    def close(self) -> None:
        for db in self.all:
            db.close()


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        self.request.settimeout(self.server.read_timeout)
        # One short line each way per command: without this, Nagle's algorithm and delayed
        # ACKs stall every exchange by tens of milliseconds.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        outcome = "?"
        try:
            session = Session(self.rfile, self.wfile)
            script = session.env.get("agi_network_script", "").split("?", 1)[0].strip("/")
            route = ROUTES.get(script)
            if route is None:
                outcome = f"unknown script {script!r}"
                session.verbose(f"panel: {outcome}", 1)
                return
            outcome = route(session, self.server)
        except ChannelGone as exc:
            outcome = f"caller gone: {exc}"
        except AgiError as exc:
            outcome = f"AGI error ({'permanent' if exc.permanent else 'transient'}): {exc}"
            log.warning(outcome)
        except Exception:
            log.exception("FastAGI session failed")
            outcome = "error"
        finally:
            self.server.outcomes.append(outcome)
            del self.server.outcomes[:-1000]


class Server(socketserver.TCPServer):
    """A thread per session, up to ``max_sessions``, sharing ``db_connections`` connections.

    On PostgreSQL one more connection, of the caller cache's thread, listens for changes to
    phones, memberships and call plans (``telephony.callers``).

    Beyond ``max_sessions`` a new connection is closed at once (Asterisk's AGISTATUS is
    FAILURE and the dialplan hangs up politely). Session threads are kept and reused; one
    waiting for a caller's digits holds no database connection.
    """

    allow_reuse_address = True
    request_queue_size = 256  # a burst of calls must queue, not be reset

    def __init__(
        self,
        address: tuple[str, int],
        *,
        max_sessions: int = 64,
        read_timeout: float = 30.0,
        db_connections: int = 4,
    ) -> None:
        self.read_timeout = read_timeout
        self.outcomes: list[str] = []
        self.slots = threading.BoundedSemaphore(max_sessions)
        self.sessions = ThreadPoolExecutor(max_workers=max_sessions, thread_name_prefix="fastagi")
        self.database = Database(db_connections)
        self.rates = RateCache(self.database.run)
        self.callers = CallerCache()
        super().__init__(address, Handler)
        self.callers.start()

    def warm(self, timeout: float = 60.0) -> None:
        """Load the rates of the decks in force, and listen for caller changes, before the
        first call. Without it the first calls after a start ask the database for both."""
        try:
            routes = self.database.run(services.routes)
        except DatabaseError:
            log.exception("FastAGI: the rates stay in the database for now")
            return
        for thread in self.rates.load_later([deck.pk for _trunk, deck in routes if deck]):
            thread.join(timeout)
        self.callers.ready(timeout)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("FastAGI: too many sessions, refusing %s", client_address)
            self.shutdown_request(request)
            return
        self.sessions.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.sessions.shutdown(wait=False, cancel_futures=True)
        self.callers.stop()
        self.database.close()
