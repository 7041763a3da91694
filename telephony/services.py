"""Telephony write path: rate decks, phones and PINs, and the two halves of every call.

``call_authorize`` decides whether a call may go out and reserves the credit for it (one
database transaction); ``call_settle`` bills what the callee was actually connected for, at
the rate chosen when the call began, and frees the rest. Both are safe to repeat.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import phonenumbers
from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connection,
    connections,
    transaction,
)
from django.db.models import Max, Model, Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from panel.audit import audit_record
from panel.db import bound_cursor
from panel.mail import send_templated_mail
from panel.models import HoldState, Membership, MembershipStatus, Service, User
from panel.services import (
    InsufficientCredit,
    LedgerError,
    credit_hold,
    credit_release,
    credit_settle,
)
from panel.services.ledger import SOURCE_KEY, money
from panel.tasking import enqueue_on_commit
from telephony import decks, pins, rating
from telephony.decks import DeckError
from telephony.models import (
    ADMIN_ONLY_CLASSES,
    DEFAULT_ALLOWED,
    AccessNumber,
    CallPlan,
    CallRecord,
    CallState,
    Carrier,
    DeckMapping,
    DeckState,
    Phone,
    PinLock,
    Rate,
    RateDeck,
    SettledBy,
    Trunk,
)

log = logging.getLogger(__name__)
E164 = re.compile(r"^\+[1-9][0-9]{5,14}$")
PIN = re.compile(r"^[0-9]{4,8}$")
TEMPLATE = re.compile(r"^[A-Za-z0-9/@._:-]*\{number\}[A-Za-z0-9/@._:-]*$")
HOLD_MARGIN = timedelta(minutes=10)


class TelephonyError(Exception):
    """Something a member or admin asked for that cannot be done; the message says why."""


# Phones, PINs, plans --------------------------------------------------------------------------


def plan_for(member: User) -> CallPlan:
    for _ in range(5):
        try:
            with transaction.atomic():
                plan, _created = CallPlan.objects.get_or_create(
                    member=member,
                    defaults={
                        "allowed_classes": list(DEFAULT_ALLOWED),
                        "account_number": pins.account_new(),
                    },
                )
            return plan
        except IntegrityError:
            continue  # a random account number already taken (or a plan made meanwhile)
    return CallPlan.objects.get(member=member)


@transaction.atomic
def phone_add(*, member: User, number: str) -> Phone:
    if not Membership.objects.filter(user=member, status=MembershipStatus.MEMBER).exists():
        raise TelephonyError("Only members in good standing may order services.")
    try:
        parsed = rating.normalize(re.sub(r"[\s()/.-]", "", number).replace("+", "00", 1), "DE")
    except rating.NotANumber as exc:
        raise TelephonyError(f"{number}: {exc}") from None
    e164 = rating.e164(parsed)
    if Phone.objects.filter(number=e164, verified_at__isnull=False).exclude(member=member).exists():
        raise TelephonyError(f"{e164} is verified by another member.")
    try:
        with transaction.atomic():
            phone = Phone.objects.create(
                member=member, number=e164, verification_code=f"{secrets.randbelow(10**6):06d}"
            )
    except IntegrityError:
        raise TelephonyError(f"You added {e164} already.") from None
    plan_for(member)
    audit_record(
        actor=member, action="phone.added", obj=phone, owner=member, after={"number": e164}
    )
    return phone


@transaction.atomic
def phone_remove(*, phone: Phone, actor: User) -> None:
    audit_record(
        actor=actor,
        action="phone.removed",
        obj=phone,
        owner=phone.member,
        before={"number": phone.number},
    )
    phone.delete()


@transaction.atomic
def pin_set(*, member: User, pin: str) -> CallPlan:
    if not PIN.match(pin):
        raise TelephonyError("A PIN is 4 to 8 digits.")
    plan = plan_for(member)
    CallPlan.objects.filter(pk=plan.pk).update(pin_hash=pins.pin_hash(pin))
    audit_record(actor=member, action="call_plan.pin_set", obj=plan, owner=member)
    plan.refresh_from_db()
    return plan


# Wrong PINs across calls ----------------------------------------------------------------------

FREE_TRIES = 3
BLOCK_AFTER = 10


def pin_lock_keys(*, caller: str, account: str) -> list[str]:
    """The keys a PIN attempt counts against: the account tried and the caller ID trying.

    Callers without a caller ID share one key: a script dialling anonymously must not get
    unlimited guesses, at the cost of anonymous callers locking each other out for a while.
    """
    caller_key = re.sub(r"[^0-9+]", "", caller)[:32] or "anonymous"
    return [f"account:{account[:20]}", f"caller:{caller_key}"]


@dataclass
class PinCandidate:
    """What a PIN is checked against, read before the (slow) hash is computed."""

    member: User | None
    pin_hash: str
    locked: bool
    keys: list[str]


def pin_candidate(*, account: str = "", member: User | None = None, caller: str) -> PinCandidate:
    """The member an account number (or the phone's member) stands for, and whether a lock
    stops the attempt. One database step; the hash is checked after it, off the connection.
    """
    plan = (
        CallPlan.objects.filter(member=member).select_related("member").first()
        if member is not None
        else CallPlan.objects.filter(account_number=account).select_related("member").first()
        if pins.account_valid(account)
        else None
    )
    keys = pin_lock_keys(caller=caller, account=plan.account_number if plan else account)
    now = timezone.now()
    locked = (
        PinLock.objects.filter(key__in=keys)
        .filter(Q(blocked=True) | Q(locked_until__gt=now))
        .exists()
    )
    return PinCandidate(
        member=plan.member if plan else None,
        pin_hash=plan.pin_hash if plan else "",
        locked=locked,
        keys=keys,
    )


def pin_delay(failures: int) -> timedelta | None:
    """How long a key stays locked after ``failures`` wrong PINs (None: not locked)."""
    if failures < FREE_TRIES:
        return None
    return timedelta(minutes=min(2 ** (failures - FREE_TRIES), 24 * 60))


@transaction.atomic
def pin_outcome(*, candidate: PinCandidate, pin: str, right: bool, rehash: bool) -> None:
    """Count a wrong PIN against its keys (or forget them after a right one)."""
    if right:
        PinLock.objects.filter(key__in=candidate.keys).delete()
        if rehash and candidate.member is not None:
            CallPlan.objects.filter(member=candidate.member).update(pin_hash=pins.pin_hash(pin))
        return
    now = timezone.now()
    for key in candidate.keys:
        member = candidate.member if key.startswith("account:") else None
        lock, _ = PinLock.objects.select_for_update().get_or_create(
            key=key, defaults={"member": member}
        )
        lock.failures += 1
        lock.last_failure_at = now
        delay = pin_delay(lock.failures)
        was_locked = lock.blocked or lock.locked_until is not None
        lock.locked_until = now + delay if delay else None
        lock.blocked = lock.failures >= BLOCK_AFTER
        # The account's member hears of it when a lock starts and when it becomes a block.
        # A caller ID's lock names no member: whoever dialled from it is not known.
        if member is not None and (
            (delay and not was_locked) or (lock.blocked and lock.failures == BLOCK_AFTER)
        ):
            lock.notify = True
        lock.save()


def pin_locks_of(member: User) -> list[PinLock]:
    """Locks on the member's account or on the caller IDs of the member's phones."""
    plan = plan_for(member)
    # Verified phones only: adding a number unverified must not unlock whoever dials from it.
    numbers = list(
        Phone.objects.filter(member=member, verified_at__isnull=False).values_list(
            "number", flat=True
        )
    )
    keys = [f"account:{plan.account_number}", *(f"caller:{n}" for n in numbers)]
    return list(PinLock.objects.filter(key__in=keys))


@transaction.atomic
def pin_unlock(*, member: User, actor: User) -> int:
    """Forget the wrong PINs counted against the member's account and phones."""
    locks = pin_locks_of(member)
    if not locks:
        return 0
    audit_record(
        actor=actor,
        action="call_plan.pin_unlocked",
        obj=plan_for(member),
        owner=member,
        before={lock.key: lock.failures for lock in locks},
        after={},
    )
    PinLock.objects.filter(pk__in=[lock.pk for lock in locks]).delete()
    return len(locks)


def pin_lock_notices() -> int:
    """Email members whose account or phone was locked by wrong PINs; each lock once."""
    sent = 0
    for lock in PinLock.objects.filter(notify=True, member__isnull=False).select_related("member"):
        if not PinLock.objects.filter(pk=lock.pk, notify=True).update(notify=False):
            continue  # another worker took it
        member = lock.member
        assert member is not None  # noqa: S101  (filtered above)
        try:
            send_templated_mail(
                "telephony/email/pin_locked",
                to=member.email,
                context={"user": member, "lock": lock, "caller": lock.key.partition(":")[2]},
            )
        except Exception:
            PinLock.objects.filter(pk=lock.pk).update(notify=True)
            raise
        sent += 1
    return sent


@transaction.atomic
def plan_update(
    *,
    member: User,
    actor: User,
    per_call_cap: Decimal,
    allowed_classes: list[str],
    max_concurrent: int | None = None,
) -> CallPlan:
    plan = plan_for(member)
    is_admin = actor.has_perm("telephony.change_callplan") and actor.pk != member.pk
    if not is_admin and set(allowed_classes) & ADMIN_ONLY_CLASSES - set(plan.allowed_classes):
        raise TelephonyError("Premium-rate and shared-cost numbers can only be opened by an admin.")
    if per_call_cap <= 0 or per_call_cap > Decimal("100"):
        raise TelephonyError("The per-call cap is between 0.01 and 100.")
    before = {
        "per_call_cap": str(plan.per_call_cap),
        "allowed_classes": plan.allowed_classes,
        "max_concurrent": plan.max_concurrent,
    }
    plan.per_call_cap = per_call_cap
    plan.allowed_classes = sorted(set(allowed_classes))
    if max_concurrent is not None and is_admin:
        plan.max_concurrent = max_concurrent
    plan.save()
    audit_record(
        actor=actor,
        action="call_plan.changed",
        obj=plan,
        owner=member,
        before=before,
        after={
            "per_call_cap": str(plan.per_call_cap),
            "allowed_classes": plan.allowed_classes,
            "max_concurrent": plan.max_concurrent,
        },
    )
    return plan


# Trunks ---------------------------------------------------------------------------------------


def dial_string(trunk: Trunk, e164: str) -> str:
    """The trunk's template with the number put in; both checked against allowlists."""
    if not TEMPLATE.match(trunk.dial_template) or trunk.dial_template.count("{number}") != 1:
        raise TelephonyError(f"trunk {trunk} has an unsafe dial template")
    if not E164.match(e164):
        raise TelephonyError(f"{e164!r} is not an E.164 number")
    return trunk.dial_template.replace("{number}", e164)


# Rate decks -----------------------------------------------------------------------------------

# The presets of files with a header, their columns by name: what scripts and the demo pass
# to deck_upload. The staff pages start from decks.PRESETS and show a preview instead.
PRESETS: dict[str, dict[str, Any]] = {
    name: {
        **preset.options,
        "header": True,
        "columns": {key: title for key, (title, _pos) in preset.columns.items() if title},
    }
    for name, preset in decks.PRESETS.items()
    if preset.options.get("header", True)
}
DRAFT_HOURS = 24  # a deck uploaded and never imported is deleted after this
CHUNK_BYTES = 1 << 20  # how much of a deck's file the import reads at a time


def max_deck_bytes() -> int:
    return settings.PANEL_UPLOAD_MAX_MB * 1024 * 1024


def _detected(content: bytes) -> decks.Sniffed:
    if len(content) > max_deck_bytes():
        raise DeckError([f"the file is larger than {settings.PANEL_UPLOAD_MAX_MB} MB"])
    if not content.strip():
        raise DeckError(["the file is empty"])
    return decks.sniff(content[: decks.HEAD_BYTES], decks.detect_encoding(content))


def _next_version(carrier: Carrier) -> int:
    Carrier.objects.select_for_update().get(pk=carrier.pk)  # versions are numbered one at a time
    return (RateDeck.objects.filter(carrier=carrier).aggregate(v=Max("version"))["v"] or 0) + 1


def _deck_create(
    *,
    carrier: Carrier,
    actor: User | None,
    filename: str,
    content: bytes,
    effective_from: datetime,
    mapping: decks.Mapping,
    read_as: str,
    draft: bool,
) -> RateDeck:
    deck = RateDeck.objects.create(
        carrier=carrier,
        version=None if draft else _next_version(carrier),
        state=DeckState.DRAFT if draft else DeckState.IMPORTING,
        effective_from=effective_from,
        source_name=filename[:200],
        source_sha256=hashlib.sha256(content).hexdigest(),
        content=content,
        mapping=mapping.to_json(),
        read_as=read_as[:100],
        uploaded_by=actor,
        rows_total=content.count(b"\n") or content.count(b"\r"),
    )
    audit_record(
        actor=actor,
        action="rate_deck.uploaded",
        obj=deck,
        owner=None,
        after={
            "version": deck.version,
            "file": filename,
            "sha256": deck.source_sha256,
            "state": deck.state,
        },
    )
    return deck


@transaction.atomic
def deck_upload(
    *,
    carrier: Carrier,
    actor: User | None,
    filename: str,
    content: bytes,
    mapping: dict[str, Any],
    effective_from: datetime,
) -> RateDeck:
    """Store a deck and import it with ``mapping``, without a preview (scripts, the demo).

    What the mapping leaves out (delimiter, encoding, header) is detected from the file.
    """
    sniffed = _detected(content)
    found = decks.Mapping.from_json(
        mapping,
        defaults=decks.Mapping(
            delimiter=sniffed.delimiter, encoding=sniffed.encoding, header=sniffed.header
        ),
    )
    deck = _deck_create(
        carrier=carrier,
        actor=actor,
        filename=filename,
        content=content,
        effective_from=effective_from,
        mapping=found,
        read_as="",
        draft=False,
    )
    from telephony.tasks import import_deck

    enqueue_on_commit(import_deck, deck.pk)
    return deck


@transaction.atomic
def deck_draft(
    *,
    carrier: Carrier,
    actor: User,
    filename: str,
    content: bytes,
    effective_from: datetime,
    start: str = "",
) -> RateDeck:
    """Store an upload for its preview, read as ``start`` says or as detected.

    ``start`` is ``preset:NAME``, ``saved:ID`` (a mapping saved for this carrier) or empty:
    then the carrier's last saved mapping if its columns fit the file, else the preset or
    the header names that fit it best.
    """
    sniffed = _detected(content)
    saved = None
    if start.startswith("saved:") and start[6:].isdigit():
        saved = DeckMapping.objects.filter(pk=int(start[6:]), carrier=carrier).first()
        if saved is None:
            raise TelephonyError(f"that saved mapping is not one of {carrier}'s")
    elif start.startswith("preset:"):
        if start[7:] not in decks.PRESETS:
            raise TelephonyError(f"no preset {start[7:]!r}")
        mapping, read_as = decks.preset_mapping(start[7:], sniffed), start[7:]
    elif start:
        raise TelephonyError(f"no way to read a deck called {start!r}")
    else:
        saved = next(
            (s for s in carrier.mappings.order_by("-updated_at") if _fits(s, sniffed)), None
        )
        if saved is None:
            read_as, mapping = decks.guess_mapping(sniffed)
    if saved is not None:
        mapping = _saved_mapping(saved, sniffed)
        read_as = saved.name
    return _deck_create(
        carrier=carrier,
        actor=actor,
        filename=filename,
        content=content,
        effective_from=effective_from,
        mapping=mapping,
        read_as=read_as,
        draft=True,
    )


def _saved_mapping(saved: DeckMapping, sniffed: decks.Sniffed) -> decks.Mapping:
    """A saved mapping for a new file: its columns and options, the file's own encoding.

    Next month's file may come with a byte order mark or from another PC; the columns do
    not change with that, and the encoding is known from the whole file.
    """
    mapping = decks.Mapping.from_json(saved.mapping)
    mapping.encoding = sniffed.encoding
    return mapping


def _fits(saved: DeckMapping, sniffed: decks.Sniffed) -> bool:
    try:
        mapping = _saved_mapping(saved, sniffed)
    except DeckError:
        return False
    if mapping.delimiter != sniffed.delimiter or mapping.header != sniffed.header:
        return False
    positions = [c for c in mapping.columns.values() if isinstance(c, int)]
    return max(positions, default=0) < sniffed.width


def deck_head(deck: RateDeck) -> bytes:
    """The first part of a deck's file: what the preview reads (not all of a 40 MB file)."""
    return next(_content_chunks(deck.pk, size=decks.HEAD_BYTES), b"")


def deck_preview(*, deck: RateDeck, mapping: decks.Mapping) -> decks.Preview:
    return decks.preview(deck_head(deck), mapping)


@transaction.atomic
def deck_confirm(
    *, deck_id: int, actor: User, mapping: decks.Mapping, save_as: str = ""
) -> RateDeck:
    """Import a previewed deck as mapped; the mapping saved under ``save_as`` if named."""
    deck = RateDeck.objects.defer("content").select_related("carrier").get(pk=deck_id)
    version = _next_version(deck.carrier)
    started = RateDeck.objects.filter(pk=deck_id, state=DeckState.DRAFT).update(
        state=DeckState.IMPORTING,
        version=version,
        mapping=mapping.to_json(),
        read_as=(save_as or deck.read_as)[:100],
        queued_at=timezone.now(),
    )
    if not started:
        raise TelephonyError(f"{deck} is {deck.state}: it was imported or discarded already")
    deck.refresh_from_db(fields=["state", "version", "mapping", "read_as"])
    if save_as:
        deck_mapping_save(carrier=deck.carrier, actor=actor, name=save_as, mapping=mapping)
    audit_record(
        actor=actor,
        action="rate_deck.import_started",
        obj=deck,
        owner=None,
        before={"state": DeckState.DRAFT},
        after={"state": deck.state, "version": version, "mapping": deck.mapping},
    )
    from telephony.tasks import import_deck

    enqueue_on_commit(import_deck, deck.pk)
    return deck


@transaction.atomic
def deck_mapping_save(
    *, carrier: Carrier, actor: User, name: str, mapping: decks.Mapping
) -> DeckMapping:
    """Save (or replace) a carrier's mapping under a name, for its next decks."""
    name = name.strip()[:100]
    if not name:
        raise TelephonyError("a saved mapping needs a name")
    saved, created = DeckMapping.objects.select_for_update().get_or_create(
        carrier=carrier,
        name=name,
        defaults={"mapping": mapping.to_json(), "updated_by": actor},
    )
    before = None if created else saved.mapping
    if not created:
        DeckMapping.objects.filter(pk=saved.pk).update(
            mapping=mapping.to_json(), updated_by=actor, updated_at=timezone.now()
        )
    audit_record(
        actor=actor,
        action="deck_mapping.saved",
        obj=saved,
        owner=None,
        before=before,
        after=mapping.to_json(),
    )
    return saved


@transaction.atomic
def deck_discard(*, deck_id: int, actor: User) -> bool:
    """Delete an upload that was never imported."""
    deck = RateDeck.objects.defer("content").filter(pk=deck_id, state=DeckState.DRAFT).first()
    return deck is not None and _draft_delete(deck, actor)


def _draft_delete(deck: RateDeck, actor: User | None) -> bool:
    """Delete a draft if it still is one, audited; whether it was."""
    if not RateDeck.objects.filter(pk=deck.pk, state=DeckState.DRAFT).delete()[0]:
        return False
    audit_record(
        actor=actor,
        action="rate_deck.discarded",
        obj=deck,
        owner=None,
        before={"file": deck.source_name, "state": DeckState.DRAFT},
    )
    return True


def _content_chunks(deck_id: int, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """A deck's file in slices read from the database, so that it is never all in memory.

    Each slice is a query of its own; the import asks for the next one between its COPY
    statements (a connection in COPY answers nothing else).
    """
    function = "substring" if connection.vendor == "postgresql" else "substr"
    sql = f"SELECT {function}(content, %s, %s) FROM telephony_ratedeck WHERE id = %s"  # noqa: S608
    offset = 1
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [offset, size, deck_id])
            row = cursor.fetchone()
        chunk = bytes(row[0]) if row and row[0] is not None else b""
        if not chunk:
            return
        yield chunk
        offset += len(chunk)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_lines(deck: RateDeck, rows: list[decks.DeckRow]) -> bytes:
    """Rows in COPY's text format: tab-separated, backslash, tab and line breaks escaped.

    Prefixes are digits and the numbers were parsed by the reader; only the description is
    the carrier's text, and it is escaped.
    """
    lines = []
    for r in rows:
        since = _row_from(deck, r)
        lines.append(
            f"{deck.pk}\t{r.prefix}\t{r.description.translate(_COPY_ESCAPES)}\t{r.per_minute}\t"
            f"{r.connect_fee}\t{r.initial}\t{r.increment}\t{r.free}\t"
            f"{since.isoformat() if since else _NULL}\n"
        )
    return "".join(lines).encode()


_NULL = "\\N"


def _row_from(deck: RateDeck, row: decks.DeckRow) -> datetime | None:
    """A row's own effective date, if later than the deck's (earlier ones change nothing)."""
    return row.effective if row.effective and row.effective > deck.effective_from else None


def _batches(rows: Iterator[decks.DeckRow], size: int) -> Iterator[list[decks.DeckRow]]:
    batch: list[decks.DeckRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def deck_import(*, deck_id: int) -> RateDeck:
    """Validate the whole file, then insert all rates in one transaction (or none).

    Whatever goes wrong ends the import as failed with the reason (a bad file with its lines,
    anything else with what it was), never "importing" for good; the file is kept, so that
    a failed import can be retried (deck_retry).
    """
    deck = RateDeck.objects.defer("content").get(pk=deck_id)
    if deck.state != DeckState.IMPORTING:
        return deck
    try:
        _deck_insert(deck)
    except DeckError as exc:
        _deck_failed(deck.pk, exc.errors)
    except Exception as exc:
        log.exception("rate deck %s: the import failed", deck.pk)
        _deck_failed(deck.pk, [f"the import failed ({type(exc).__name__}: {exc}); retry it"])
    deck.refresh_from_db()
    return deck


def _deck_failed(deck_id: int, errors: list[str]) -> bool:
    return bool(
        RateDeck.objects.filter(pk=deck_id, state=DeckState.IMPORTING).update(
            state=DeckState.FAILED, errors=errors
        )
    )


def fail_stale_deck_imports(*, now: datetime | None = None) -> int:
    """Fail imports still running long after they were asked for: their worker stopped.

    A worker killed mid-import (or its message lost) leaves the deck "importing", and the
    staff page polling it, for good. The import itself is one transaction, so nothing of it
    is half there; the deck can be retried. Uploads left unmapped for a day are deleted.
    """
    now = now or timezone.now()
    minutes = settings.TELEPHONY_DECK_IMPORT_TIMEOUT_MINUTES
    cutoff = now - timedelta(minutes=minutes)
    failed = 0
    for deck in RateDeck.objects.filter(state=DeckState.IMPORTING, queued_at__lt=cutoff).only("pk"):
        reason = f"the import did not finish within {minutes} minutes (its worker stopped?)"
        if _deck_failed(deck.pk, [f"{reason}; retry it"]):
            audit_record(
                actor=None,
                action="rate_deck.import_timed_out",
                obj=deck,
                owner=None,
                after={"state": DeckState.FAILED},
            )
            failed += 1
    stale = now - timedelta(hours=DRAFT_HOURS)
    for deck in (
        RateDeck.objects.filter(state=DeckState.DRAFT, created_at__lt=stale)
        .select_related("carrier")
        .only("pk", "source_name", "version", "carrier__name")
    ):
        _draft_delete(deck, None)
    return failed


@transaction.atomic
def deck_retry(*, deck_id: int, actor: User) -> RateDeck:
    """Import a failed deck again, from the file it kept."""
    retried = RateDeck.objects.filter(
        pk=deck_id, state=DeckState.FAILED, content__isnull=False
    ).update(state=DeckState.IMPORTING, errors=[], rows_done=0, queued_at=timezone.now())
    deck = RateDeck.objects.defer("content").get(pk=deck_id)
    if not retried:
        raise TelephonyError(f"{deck} is {deck.state}, not a failed import with its file kept")
    audit_record(
        actor=actor,
        action="rate_deck.retried",
        obj=deck,
        owner=None,
        before={"state": DeckState.FAILED},
        after={"state": DeckState.IMPORTING},
    )
    from telephony.tasks import import_deck

    enqueue_on_commit(import_deck, deck.pk)
    return deck


_RATE_COLUMNS = (
    "deck_id, prefix, description, per_minute, connect_fee, initial_seconds, increment_seconds, "
    "free_seconds, effective_from"
)


class _Progress:
    """The lines read so far, written to the deck for the staff page from a connection of its
    own (the import's transaction shows nothing until it commits); PostgreSQL only.

    SQLite (the demo) has one writer at a time: a second connection would wait for the
    import to end, and the import for it.
    """

    EVERY = 50_000

    def __init__(self, deck_id: int) -> None:
        self.deck_id = deck_id
        self.shown = 0
        self.db = (
            connections.create_connection(DEFAULT_DB_ALIAS)
            if connection.vendor == "postgresql"
            else None
        )

    def __call__(self, lines: int) -> None:
        if self.db is None or lines - self.shown < self.EVERY:
            return
        self.shown = lines
        try:
            with self.db.cursor() as cursor:
                cursor.execute(
                    "UPDATE telephony_ratedeck SET rows_done = %s WHERE id = %s AND state = %s",
                    [lines, self.deck_id, DeckState.IMPORTING],
                )
        except DatabaseError:
            log.warning("rate deck %s: progress not written", self.deck_id, exc_info=True)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


# Two imports of one deck (a message delivered twice) take turns on this lock, not on the
# deck's row: the row takes the progress while the import runs.
_DECK_LOCK = "SELECT pg_advisory_xact_lock(hashtext('telephony.deck_import'), %s)"


def _deck_insert(deck: RateDeck) -> None:
    progress = _Progress(deck.pk)
    try:
        _deck_copy(deck, progress)
    finally:
        progress.close()


def _deck_copy(deck: RateDeck, progress: _Progress) -> None:
    mapping = decks.Mapping.from_json(deck.mapping)
    reader = decks.Reader(mapping)
    inserted = 0
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(_DECK_LOCK, [deck.pk])
            locked = RateDeck.objects.defer("content").get(pk=deck.pk)
            if locked.state != DeckState.IMPORTING or Rate.objects.filter(deck=deck).exists():
                return
            write = _copy_rates if connection.vendor == "postgresql" else _create_rates
            # The next slice of the file is read between batches (a connection in COPY
            # answers nothing else); once a line was bad nothing more is written, and the
            # rest is read for its errors.
            for batch in _batches(reader.rows(_content_chunks(deck.pk)), 10_000):
                progress(reader.lines)
                if not reader.error_count:
                    write(deck, batch)
                    inserted += len(batch)
            if reader.error_count:
                # Repeated prefixes too, with the rest (the database found none of them: it
                # was given nothing once a line was bad).
                found = decks.duplicates(_content_chunks(deck.pk), mapping)
                raise DeckError(decks.with_duplicates(reader.summary(), found))
            RateDeck.objects.filter(pk=deck.pk).update(
                state=DeckState.READY, rows_total=inserted, rows_done=inserted, content=None
            )
    except Exception as exc:
        if not _repeated_prefix(exc):
            raise
        raise DeckError(
            decks.duplicates(_content_chunks(deck.pk), mapping)
            or [f"a prefix appears twice ({exc})"]
        ) from None
    if connection.vendor == "postgresql":
        # Fresh statistics for the planner: with none, it took the new deck for a few rows
        # and found the longest prefix by filtering all of them (2 ms per call setup at
        # 20,000 rates, 20 ms at 200,000) instead of probing the (deck, prefix) index.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE telephony_rate")


def _copy_rates(deck: RateDeck, batch: list[decks.DeckRow]) -> None:
    # COPY's text format written directly: psycopg's write_row adapts each value in Python,
    # which took longer than the database took to store the rows.
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY telephony_rate ({_RATE_COLUMNS}) FROM STDIN") as copy,
    ):
        copy.write(_copy_lines(deck, batch))


def _create_rates(deck: RateDeck, batch: list[decks.DeckRow]) -> None:
    Rate.objects.bulk_create(
        [
            Rate(
                deck=deck,
                prefix=r.prefix,
                description=r.description,
                per_minute=r.per_minute,
                connect_fee=r.connect_fee,
                initial_seconds=r.initial,
                increment_seconds=r.increment,
                free_seconds=r.free,
                effective_from=_row_from(deck, r),
            )
            for r in batch
        ],
        batch_size=2000,
    )


def _repeated_prefix(exc: Exception) -> bool:
    """Whether the database refused a rate for its prefix being there already."""
    if isinstance(exc, IntegrityError):
        return True
    if connection.vendor == "postgresql":
        import psycopg

        return isinstance(exc, psycopg.errors.UniqueViolation)
    return False


def deck_in_force(carrier: Carrier, at: datetime | None = None) -> RateDeck | None:
    return (
        RateDeck.objects.filter(
            carrier=carrier, state=DeckState.READY, effective_from__lte=at or timezone.now()
        )
        .order_by("-effective_from", "-version")
        .first()
    )


_ROUTES: dict[str, Any] = {"at": 0.0, "routes": []}
ROUTES_TTL_S = 5.0


def routes() -> list[tuple[Trunk, RateDeck | None]]:
    """Active trunks by priority with their carrier's deck in force, cached for a few seconds.

    Every call setup needs them and they change rarely (a new deck, a trunk switched off);
    a few seconds of delay before a change is seen costs nothing, a query per call does.
    """
    now = time.monotonic()
    if now - _ROUTES["at"] > ROUTES_TTL_S:
        trunks = list(
            Trunk.objects.filter(active=True).select_related("carrier").order_by("priority", "name")
        )
        decks = {t.carrier_id: deck_in_force(t.carrier) for t in trunks}
        _ROUTES.update(at=now, routes=[(t, decks[t.carrier_id]) for t in trunks])
    return list(_ROUTES["routes"])


def forget_routes() -> None:
    _ROUTES["at"] = 0.0
    _ACCESS.clear()


_ACCESS: dict[str, tuple[float, AccessNumber | None]] = {}


def access_number(number: str) -> AccessNumber | None:
    """The access number called; cached like the routes (they change about never)."""
    cached = _access_cached(number)
    if cached is None:
        cached = _ACCESS[number] = (
            time.monotonic(),
            AccessNumber.objects.filter(number=number).first(),
        )
    return cached[1]


def access_number_known(number: str) -> AccessNumber | None:
    """The access number if ``access_number`` found it lately; never asks the database."""
    cached = _access_cached(number)
    return None if cached is None else cached[1]


def _access_cached(number: str) -> tuple[float, AccessNumber | None] | None:
    cached = _ACCESS.get(number)
    if cached is None or time.monotonic() - cached[0] > ROUTES_TTL_S:
        return None
    return cached


_STATEMENTS: dict[tuple[str, str], str] = {}


def _statement(name: str, build: Callable[[], str]) -> str:
    """A statement's text, built once per database vendor.

    The hot-path statements name their columns from the models; on every call setup,
    building the text again took longer than the database took to run it.
    """
    key = (connection.vendor, name)
    sql = _STATEMENTS.get(key)
    if sql is None:
        sql = _STATEMENTS[key] = build()
    return sql


def _columns(fields: Any, alias: str = "") -> str:
    """The quoted column names of ``fields``, each prefixed with ``alias``."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}{quote(f.column or f.attname)}" for f in fields)


_LONGEST_PREFIX = """
    SELECT {columns} FROM telephony_rate
    WHERE deck_id = %s
      AND prefix IN (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
      AND (effective_from IS NULL OR effective_from <= %s)
    ORDER BY length(prefix) DESC, effective_from DESC NULLS LAST LIMIT 1"""


def _rate_for_sql() -> str:
    """rate_for's statement for this database."""
    return _statement(
        "rate_for",
        lambda: _LONGEST_PREFIX.format(columns=_columns(Rate._meta.concrete_fields)),
    )


def rate_for(deck: RateDeck, e164: str, at: datetime | None = None) -> Rate | None:
    """The longest matching prefix of the deck in force ``at`` (one indexed lookup, ≤ 15 keys).

    A rate whose row names a later moment is not used before it; of one prefix's rates in
    force, the latest. In SQL of its own: on every call setup, the ORM's building of the
    query took longer than the database's answer.
    """
    keys = rating.prefixes(e164)
    if not keys:
        return None
    # Always 15 keys (the shortest repeated), so that the statement is one constant text.
    with bound_cursor() as cursor:
        cursor.execute(
            _rate_for_sql(),
            [deck.pk, *keys, *keys[-1:] * (15 - len(keys)), at or timezone.now()],
        )
        row = cursor.fetchone()
    return None if row is None else _instances([Rate], row)[0]


@dataclass
class Quote:
    e164: str
    destination_class: str
    rate: Rate | None
    deck: RateDeck | None
    trunk: Trunk | None
    per_minute: Decimal = Decimal(0)


def quote(*, digits: str, region: str) -> Quote:
    """What a call to a number costs per minute now (for members' "what does it cost?")."""
    number = rating.normalize(re.sub(r"[\s()/.-]", "", digits).replace("+", "00", 1), region)
    e164 = rating.e164(number)
    for trunk in Trunk.objects.filter(active=True).select_related("carrier"):
        deck = deck_in_force(trunk.carrier)
        rate = rate_for(deck, e164) if deck else None
        if rate is not None:
            return Quote(e164, rating.classify(number), rate, deck, trunk, rate.per_minute)
    return Quote(e164, rating.classify(number), None, None, None)


# Calls ----------------------------------------------------------------------------------------


@dataclass
class Decision:
    ok: bool
    reason: str = ""
    prompt: str = ""
    limit_seconds: int = 0
    dial_strings: list[str] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)  # seconds, one per dial string
    call: CallRecord | None = None


def caller_e164(caller: str, region: str) -> str:
    """A caller ID as E.164, as carriers send it: +49151..., 0049151..., 49151..., 0151....

    National forms are read in the access number's country. "" when it is no number (hidden,
    "anonymous", garbage): such a caller is asked for account and PIN.
    """
    if E164.match(caller):
        return caller  # the usual form costs no parsing
    digits = re.sub(r"[\s()./-]", "", caller)
    if not digits.lstrip("+").isdigit() or not 3 <= len(digits) <= 20:
        return ""
    if digits.startswith("00"):
        candidates = ["+" + digits[2:]]
    elif digits.startswith("+") or digits.startswith("0"):
        candidates = [digits]
    else:
        # International without any prefix (49151...), else national without the trunk 0.
        candidates = ["+" + digits, digits]
    for text in candidates:
        try:
            number = phonenumbers.parse(text, region or None)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return rating.e164(number)
    return ""


def identify(caller: str) -> Phone | None:
    """The phone a caller ID belongs to (verified first), if any, with member, membership, plan.

    What ``select_related("member__membership", "member__call_plan")`` would give, in SQL of
    its own: on every call setup, the ORM's building of that query took three times as long
    as the database's answer.
    """
    if not E164.match(caller or ""):
        return None
    models: list[type[Model]] = [Phone, User, Membership, CallPlan]
    sql = _statement(
        "identify",
        lambda: (
            "SELECT "
            + ", ".join(_columns(m._meta.concrete_fields, f"t{n}.") for n, m in enumerate(models))
            + _PHONE_JOINS
        ),
    )
    with bound_cursor() as cursor:
        cursor.execute(sql, [caller])
        row = cursor.fetchone()
    if row is None:
        return None
    phone, member, membership, plan = _instances(models, row)
    assert phone is not None  # noqa: S101  (the row exists)
    assert member is not None  # noqa: S101  (an inner join)
    phone.member = member
    User.membership.related.set_cached_value(member, membership)
    User.call_plan.related.set_cached_value(member, plan)
    return phone


_PHONE_JOINS = """
    FROM telephony_phone t0
    JOIN panel_user t1 ON t1.id = t0.member_id
    LEFT JOIN panel_membership t2 ON t2.user_id = t1.id
    LEFT JOIN telephony_callplan t3 ON t3.member_id = t1.id
    WHERE t0.number = %s
    ORDER BY t0.verified_at DESC NULLS LAST
    LIMIT 1"""


def _instances(models: list[type[Model]], row: tuple[Any, ...]) -> list[Any]:
    """Model instances from consecutive runs of a row's columns (None for a missing join).

    Values go through the converters the ORM would apply (SQLite returns decimals as
    numbers and times as text; JSON arrives as text).
    """
    db = connections[DEFAULT_DB_ALIAS]  # the proxy `connection` costs a lookup per use
    out: list[Any] = []
    start = 0
    for model in models:
        attnames, pk_index, converters = _loader(model, db)
        values = list(row[start : start + len(attnames)])
        start += len(attnames)
        if values[pk_index] is None:
            out.append(None)
            continue
        for n, col, functions in converters:
            for convert in functions:
                values[n] = convert(values[n], col, db)
        out.append(model.from_db(db.alias, attnames, values))
    return out


_LOADERS: dict[
    tuple[str, type[Model]], tuple[list[str], int, list[tuple[int, Any, list[Any]]]]
] = {}


def _loader(model: type[Model], db: Any) -> tuple[list[str], int, list[tuple[int, Any, list[Any]]]]:
    """The field names, the index of the primary key and the converters of a model's columns.

    Kept per database vendor: the converters depend on the backend's settings, never on one
    connection.
    """
    key = (db.vendor, model)
    if key not in _LOADERS:
        fields = model._meta.concrete_fields
        converters = []
        for n, field in enumerate(fields):
            col = field.get_col(model._meta.db_table)
            functions = db.ops.get_db_converters(col) + col.get_db_converters(db)
            if functions:
                converters.append((n, col, functions))
        _LOADERS[key] = (
            [f.attname for f in fields],
            list(fields).index(model._meta.pk),
            converters,
        )
    return _LOADERS[key]


def verify_phone(*, phone: Phone, code: str) -> bool:
    """The member keyed in the code shown in the panel, calling from this phone."""
    if not phone.verification_code or not secrets.compare_digest(phone.verification_code, code):
        return False
    with transaction.atomic():
        try:
            with transaction.atomic():
                done = Phone.objects.filter(pk=phone.pk, verified_at__isnull=True).update(
                    verified_at=timezone.now(), verification_code=""
                )
        except IntegrityError:
            return False  # somebody else verified this number first
        if done:
            audit_record(
                actor=phone.member,
                action="phone.verified",
                obj=phone,
                owner=phone.member,
                after={"number": phone.number},
            )
    return bool(done)


def _refuse(uniqueid: str, reason: str, prompt: str, **record: Any) -> Decision:
    call, created = CallRecord.objects.get_or_create(
        uniqueid=uniqueid, defaults={"state": CallState.REFUSED, "refusal": reason[:200], **record}
    )
    if not created and call.state != CallState.REFUSED:
        # Asked again for a call it authorized: that call is now one of those in progress
        # (or its credit is held), which must not turn the first answer into a refusal.
        return _earlier_decision(call)
    log.info("call %s refused: %s", uniqueid, reason)
    return Decision(ok=False, reason=reason, prompt=prompt, call=call)


def _earlier_decision(call: CallRecord) -> Decision:
    if call.routes:
        dials = [route["dial"] for route in call.routes]
        limits = [int(route["limit"]) for route in call.routes]
    else:  # authorized before calls kept their routes
        dials = _dial_strings(call.destination)
        limits = [call.limit_seconds] * len(dials)
    return Decision(
        ok=call.state == CallState.AUTHORIZED,
        reason=call.refusal,
        call=call,
        limit_seconds=call.limit_seconds,
        dial_strings=dials,
        limits=limits,
    )


Choice = tuple[Trunk, "RateDeck | None", Rate]


@dataclass
class Destination:
    """What a caller keyed in, as a number, and the trunks whose carrier has a rate for it.

    ``problem`` says why it cannot be called; ``retry`` that a typo is the likely cause
    (not a number, no carrier has a rate), so the caller is asked again.
    """

    digits: str
    e164: str = ""
    klass: str = ""
    choices: list[Choice] = field(default_factory=list)
    problem: str = ""
    prompt: str = ""
    retry: bool = False


def destination(
    *,
    digits: str,
    region: str,
    rate_lookup: Callable[[RateDeck, str], Rate | None] | None = None,
) -> Destination:
    """Read the destination a caller keyed in: number, class, and the trunks that carry it."""
    lookup = rate_lookup or rate_for
    try:
        number = rating.normalize(digits, region)
    except rating.NotANumber as exc:
        return Destination(
            digits=digits,
            problem=f"not a number: {exc}",
            prompt="custom/invalid-number",
            retry=True,
        )
    e164 = rating.e164(number)
    found = Destination(digits=digits, e164=e164, klass=rating.classify(number))
    # Only trunks whose carrier has a rate for the number: failover to a carrier without one
    # would carry a call nobody knows the price of.
    for trunk, deck in routes():
        rate = lookup(deck, e164) if deck else None
        if rate is not None:
            found.choices.append((trunk, deck, rate))
    if not found.choices:
        found.problem, found.prompt, found.retry = f"no rate for {e164}", "custom/no-rate", True
    return found


def call_authorize(
    *,
    uniqueid: str,
    member: User,
    caller: str,
    access_number: AccessNumber,
    digits: str = "",
    dest: Destination | None = None,
    node: str = "",
    is_check: bool = False,
    rate_lookup: Callable[[RateDeck, str], Rate | None] | None = None,
) -> Decision:
    """Decide a call, and if it may go out, hold the credit for it. One transaction.

    Asked twice for the same call (same uniqueid), it gives the first answer again: the hold
    key and the call record's unique uniqueid make the second attempt a no-op.
    ``rate_lookup`` finds the longest prefix (the FastAGI server's in-memory tables,
    ``telephony.ratecache``); by default the database does. ``dest`` is the destination
    read already (the server reads it while the caller may still correct a typo).
    """
    if dest is None:
        dest = destination(digits=digits, region=access_number.country, rate_lookup=rate_lookup)
    base = {
        "member": member,
        "caller": caller[:32],
        "access_number": access_number,
        "node": node,
        "is_check": is_check,
    }
    if not dest.e164:
        return _refuse(uniqueid, dest.problem, dest.prompt, destination=dest.digits[:32], **base)
    base.update(destination=dest.e164, destination_class=dest.klass)
    try:
        plan = member.call_plan  # fetched with the phone, usually
    except CallPlan.DoesNotExist:
        plan = plan_for(member)
    if dest.klass not in plan.allowed_classes:
        return _refuse(
            uniqueid,
            f"{dest.klass} numbers are blocked by the call plan",
            "custom/destination-blocked",
            **base,
        )
    if not dest.choices:
        return _refuse(uniqueid, dest.problem, dest.prompt, **base)
    try:
        if _with_function():
            decision = _hold_at_once(uniqueid, member, plan, dest, base)
            if decision is not None:
                return decision
        with transaction.atomic():
            decision = _hold_and_record(uniqueid, member, plan, dest, base)
    except IntegrityError:
        decision = None  # this uniqueid was decided before; the transaction left no trace
    if decision is None:
        return _earlier_decision(CallRecord.objects.get(uniqueid=uniqueid))
    return decision


def _routes(amount: Decimal, dest: Destination) -> list[dict[str, Any]]:
    """The trunks the call may go out by, each with its carrier's rate and the limit the
    hold gives at that rate; trunks whose first block costs more than the hold are left out.
    """
    found = []
    for trunk, deck, rate in dest.choices:
        seconds = rating.affordable_seconds(
            hold=amount,
            per_minute=rate.per_minute,
            connect_fee=rate.connect_fee,
            initial=rate.initial_seconds,
            increment=rate.increment_seconds,
            free=rate.free_seconds,
        )
        if seconds <= 0:
            continue
        found.append(
            {
                "trunk": trunk.pk,
                "deck": deck.pk if deck else None,
                "rate": rate.pk,
                "per_minute": str(rate.per_minute),
                "connect_fee": str(rate.connect_fee),
                "initial": rate.initial_seconds,
                "increment": rate.increment_seconds,
                "free": rate.free_seconds,
                "limit": seconds,
                "dial": dial_string(trunk, dest.e164),
                "label": f"{trunk.carrier.name} v{deck.version if deck else '?'} +{rate.prefix}",
            }
        )
    return found


_LOCK_BALANCE = """
    SELECT posted - unbilled - held FROM panel_memberbalance WHERE member_id = %s"""
_BUSY = """
    SELECT count(*) FROM telephony_callrecord WHERE member_id = %s AND state = 'authorized'"""


def _hold_and_record(
    uniqueid: str,
    member: User,
    plan: CallPlan,
    dest: Destination,
    base: dict[str, Any],
) -> Decision:
    """The transaction of a call setup: the member's balance locked, then hold and record.

    Locking the balance row first makes the member's call setups take turns; the count of
    calls in progress is read after the lock is held, in a statement of its own, because a
    statement that waited for the lock still sees the calls of before it waited.
    """
    # SQLite (the demo) has no row locks and no FOR UPDATE; its writers take turns anyway.
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_BALANCE + lock, [member.pk])
        row = cursor.fetchone()
    available = Decimal(row[0]) if row else Decimal(0)
    amount = min(available, plan.per_call_cap).quantize(rating.EXACT)
    found = _routes(amount, dest) if amount > 0 else []
    pays = bool(found)
    call = _call_record(uniqueid, found, dest, base)
    key = call.hold_key
    expires_at = timezone.now() + timedelta(seconds=call.limit_seconds) + HOLD_MARGIN
    one_statement = _in_one_statement()
    if one_statement and pays:
        busy, recorded = _hold_and_insert(
            call,
            amount=amount,
            expires_at=expires_at,
            max_concurrent=plan.max_concurrent,
        )
        if recorded:
            return _authorized(call)
    else:
        with connection.cursor() as cursor:
            cursor.execute(_BUSY, [member.pk])
            busy = int(cursor.fetchone()[0])
    if busy >= plan.max_concurrent:
        return _refuse(
            uniqueid, f"{busy} calls already in progress", "custom/too-many-calls", **base
        )
    if not pays:
        return _refuse(
            uniqueid, f"credit {available} does not pay the first block", "custom/no-credit", **base
        )
    if one_statement:
        # The statement reserved nothing though few calls are in progress: the guard found
        # too little credit, as credit_hold would have.
        return _refuse(uniqueid, "credit taken by other calls", "custom/no-credit", **base)
    earlier = CallRecord.objects.filter(uniqueid=uniqueid).first()
    if earlier is not None:
        # Asked again: its hold (of an amount from before it) must not be taken for another.
        return _earlier_decision(earlier)
    try:
        credit_hold(member=member, amount=amount, key=key, service="calls", expires_at=expires_at)
    except InsufficientCredit:
        # Cannot happen with the row locked above, unless the books changed underneath.
        return _refuse(uniqueid, "credit taken by other calls", "custom/no-credit", **base)
    call.save(force_insert=True)
    return _authorized(call)


def _call_record(
    uniqueid: str, found: list[dict[str, Any]], dest: Destination, base: dict[str, Any]
) -> CallRecord:
    """The record of an authorized call, not saved yet: the rate as applied goes with it.

    It is rated by the first trunk the hold pays for; the settle moves it to the trunk that
    carried it, when the first was unavailable.
    """
    chosen = {r.pk: (t, d, r) for t, d, r in dest.choices}
    first = found[0] if found else None
    trunk, deck, rate = chosen[first["rate"]] if first else dest.choices[0]
    return CallRecord(
        uniqueid=uniqueid,
        state=CallState.AUTHORIZED,
        limit_seconds=first["limit"] if first else 0,
        deck=deck,
        rate=rate,
        per_minute=rate.per_minute,
        connect_fee=rate.connect_fee,
        initial_seconds=rate.initial_seconds,
        increment_seconds=rate.increment_seconds,
        free_seconds=rate.free_seconds,
        trunk=trunk,
        hold_key=f"call:{uniqueid}",
        routes=found,
        **base,
    )


_HOLD_AT_ONCE = """
    WITH hold AS MATERIALIZED (
        SELECT * FROM telephony_call_hold(
            %(member)s::bigint, %(amount)s::numeric, %(max_concurrent)s::integer,
            %(key)s::text, %(service)s::text, %(expires)s::timestamptz)
    ), call AS (
        INSERT INTO telephony_callrecord ({columns})
        SELECT {values} FROM hold WHERE outcome = 'held'
        RETURNING id
    )
    SELECT (SELECT outcome FROM hold), (SELECT busy FROM hold), (SELECT id FROM call)"""


def _hold_at_once(
    uniqueid: str,
    member: User,
    plan: CallPlan,
    dest: Destination,
    base: dict[str, Any],
) -> Decision | None:
    """PostgreSQL, the usual call setup: hold the whole per-call cap, in one round trip.

    The function telephony_call_hold (see its migration) locks the balance, counts the calls
    in progress and takes the hold; the same statement records the call. When the available
    credit is less than the cap, nothing is changed and None says so: the transaction of
    _hold_and_record then holds what there is. Autocommit: the statement is its own
    transaction (no BEGIN and COMMIT to wait for). A uniqueid or hold key used before
    raises IntegrityError, and the statement left no trace.
    """
    amount = plan.per_call_cap.quantize(rating.EXACT)
    found = _routes(amount, dest) if amount > 0 else []
    if not found:
        return None
    call = _call_record(uniqueid, found, dest, base)
    if not SOURCE_KEY.match(call.hold_key):
        raise LedgerError(f"hold key {call.hold_key!r} does not match {SOURCE_KEY.pattern}")
    sql, params = _with_call_columns(_HOLD_AT_ONCE, call)
    params.update(
        member=member.pk,
        amount=money(amount, "hold amount", positive=True),
        max_concurrent=plan.max_concurrent,
        key=call.hold_key,
        service=Service.CALLS,
        expires=timezone.now() + timedelta(seconds=call.limit_seconds) + HOLD_MARGIN,
    )
    # Inside a caller's transaction, a savepoint keeps a used uniqueid from spoiling it.
    guard = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    with guard, bound_cursor() as cursor:
        cursor.execute(sql, params)
        outcome, busy, call_id = cursor.fetchone()
    if outcome == "busy":
        return _refuse(
            uniqueid, f"{busy} calls already in progress", "custom/too-many-calls", **base
        )
    if call_id is None:
        return None
    call.pk = call_id
    call._state.adding = False
    call._state.db = connection.alias
    return _authorized(call)


def _with_call_columns(template: str, call: CallRecord) -> tuple[str, dict[str, Any]]:
    """A statement that inserts ``call`` (its columns filled in), and the call's values."""
    if not _CALL_FIELDS:
        _CALL_FIELDS.extend(f for f in CallRecord._meta.concrete_fields if not f.primary_key)
    fields = _CALL_FIELDS
    db = connections[DEFAULT_DB_ALIAS]
    sql = _statement(
        template,
        lambda: template.format(
            columns=_columns(fields), values=", ".join(f"%(c{n})s" for n in range(len(fields)))
        ),
    )
    params = {
        f"c{n}": f.get_db_prep_save(getattr(call, f.attname), db) for n, f in enumerate(fields)
    }
    return sql, params


_CALL_FIELDS: list[Any] = []


def _with_function() -> bool:
    """Whether the usual call setup is one round trip (PostgreSQL's telephony_call_hold)."""
    return connection.vendor == "postgresql"


def _in_one_statement() -> bool:
    """Whether call setups hold and record in one statement (PostgreSQL) or step by step."""
    return connection.vendor == "postgresql"


def _authorized(call: CallRecord) -> Decision:
    return Decision(
        ok=True,
        limit_seconds=call.limit_seconds,
        dial_strings=[route["dial"] for route in call.routes],
        limits=[int(route["limit"]) for route in call.routes],
        call=call,
    )


_HOLD_AND_INSERT = """
    WITH busy AS (
        SELECT count(*) AS n FROM telephony_callrecord
        WHERE member_id = %(member)s AND state = 'authorized'
    ), reserved AS (
        UPDATE panel_memberbalance SET held = held + %(amount)s
        WHERE member_id = %(member)s
          AND posted >= unbilled + held + %(amount)s
          AND (SELECT n FROM busy) < %(max_concurrent)s
        RETURNING member_id
    ), hold AS (
        INSERT INTO panel_credithold
            (member_id, key, service, amount, state, created_at, expires_at)
        SELECT member_id, %(key)s, %(service)s, %(amount)s, 'held', now(), %(expires)s
        FROM reserved
        RETURNING id
    ), call AS (
        INSERT INTO telephony_callrecord ({columns})
        SELECT {values} FROM hold
        RETURNING id
    )
    SELECT (SELECT n FROM busy), (SELECT id FROM call)"""


def _hold_and_insert(
    call: CallRecord, *, amount: Decimal, expires_at: datetime, max_concurrent: int
) -> tuple[int, bool]:
    """PostgreSQL: the busy count, credit_hold's guarded update and insert, and the call's
    insert, as one statement; returns the count and whether the call was recorded.

    Call setup waits for every round trip to the database; this one statement replaces
    four, and savepoints around them. The hold is the one credit_hold would make (same
    guard, same row); when the statement records nothing, the general path runs instead
    and explains why. A uniqueid or hold key used before raises IntegrityError, like the
    general path.
    """
    if not SOURCE_KEY.match(call.hold_key):
        raise LedgerError(f"hold key {call.hold_key!r} does not match {SOURCE_KEY.pattern}")
    sql, params = _with_call_columns(_HOLD_AND_INSERT, call)
    params.update(
        member=call.member_id,
        amount=money(amount, "hold amount", positive=True),
        max_concurrent=max_concurrent,
        key=call.hold_key,
        service=Service.CALLS,
        expires=expires_at,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        busy, call_id = cursor.fetchone()
    if call_id is None:
        return int(busy), False
    call.pk = call_id
    call._state.adding = False
    call._state.db = connection.alias
    return int(busy), True


def _dial_strings(e164: str) -> list[str]:
    """Every active trunk by priority: only for calls recorded before routes were kept."""
    if not e164.startswith("+"):
        return []
    return [dial_string(trunk, e164) for trunk, _deck in routes()]


def settle_token(uniqueid: str) -> str:
    """What proves a settle comes from the call's own channel.

    Given to the dialplan at authorize (SETTLE_TOKEN) and passed back by its hangup handler;
    without it anyone reaching the port could bill any call, or make it free.
    """
    return salted_hmac("telephony.settle", uniqueid).hexdigest()[:24]


def settle_token_valid(uniqueid: str, token: str) -> bool:
    return hmac.compare_digest(settle_token(uniqueid), token or "")


_SETTLE_FROM = (CallState.AUTHORIZED, CallState.EXPIRED)


def call_settle(
    *,
    uniqueid: str,
    dial_status: str,
    answered_at: Decimal | None,
    ended_at: Decimal | None,
    route: int = 1,
    settled_by: str = SettledBy.HANGUP,
) -> CallRecord:
    """Bill the connected time at the rate of the trunk that carried the call; repeatable.

    ``answered_at`` and ``ended_at`` are epoch seconds from the dialplan: the callee's answer
    (stored by Dial's U() routine) and the hangup. Asterisk's own ANSWEREDTIME counts from the
    caller's answer, before the prompts, and would overbill. ``route`` is the trunk the
    dialplan tried last (1 = the first). A call the expiry gave up on is still billed when
    its hangup arrives late; the second settle of a call changes nothing.
    """
    call = _call_to_settle(uniqueid)
    if call is None:
        raise CallRecord.DoesNotExist(f"no call {uniqueid!r}")
    if call.state not in _SETTLE_FROM:
        return call
    carried = _route_of(call, route)
    answered = dial_status == "ANSWER" and answered_at is not None and ended_at is not None
    connected = max(Decimal(0), (ended_at - answered_at)) if answered else Decimal(0)  # type: ignore[operator]
    # Asterisk's L() ends the call at the limit; timing noise past it is not billed.
    connected = min(connected, Decimal(carried["limit"]))
    billed = rating.billed_seconds(
        answered=answered and connected > 0,
        connected=connected,
        initial=carried["initial"],
        increment=carried["increment"],
        free=carried.get("free", 0),  # calls set up before rates had free seconds have none
    )
    amount = rating.cost(
        billed=billed,
        per_minute=Decimal(carried["per_minute"]),
        connect_fee=Decimal(carried["connect_fee"]),
    )
    changes = {
        "state": CallState.SETTLED,
        "dial_status": dial_status[:20],
        "connected_seconds": connected.quantize(Decimal("0.001")),
        "billed_seconds": billed,
        "cost": amount,
        "ended_at": timezone.now(),
        "route": carried["index"],
        "trunk": carried["trunk"],
        "deck": carried["deck"],
        "rate": carried["rate"],
        "per_minute": Decimal(carried["per_minute"]),
        "connect_fee": Decimal(carried["connect_fee"]),
        "initial_seconds": carried["initial"],
        "increment_seconds": carried["increment"],
        "free_seconds": carried.get("free", 0),
        "limit_seconds": carried["limit"],
        "settled_by": settled_by,
    }
    fields = [f for f in CallRecord._meta.concrete_fields if f.name in changes]
    db = connections[DEFAULT_DB_ALIAS]
    sql = _statement(
        "settle_update",
        lambda: (
            "UPDATE telephony_callrecord SET "  # noqa: S608  (column names from the model)
            + ", ".join(f"{f.column} = %s" for f in fields)
            + " WHERE id = %s AND state IN (%s, %s)"
        ),
    )
    with transaction.atomic():
        with bound_cursor() as cursor:
            cursor.execute(
                sql,
                [
                    *(f.get_db_prep_save(changes[f.name], db) for f in fields),
                    call.pk,
                    *_SETTLE_FROM,
                ],
            )
            moved = cursor.rowcount
        if not moved:
            return CallRecord.objects.get(pk=call.pk)
        try:
            credit_settle(
                key=call.hold_key,
                amount=amount,
                kind="call",
                quantity=Decimal(1),
                unit="call",
                unit_cost=amount,
                cost_source=_rate_label(call, carried, billed),
                occurred_at=call.started_at,
                holder=(call.member_id, Service.CALLS.value) if call.member_id else None,
            )
        except LedgerError as exc:
            log.error("settling call %s: %s", uniqueid, exc)
            raise
    for name, value in changes.items():  # what the update wrote; no need to read it back
        setattr(call, name if name not in {"trunk", "deck", "rate"} else f"{name}_id", value)
    return call


def _route_of(call: CallRecord, route: int) -> dict[str, Any]:
    """The rate of the trunk that carried the call (the first one unless the dialplan says)."""
    if call.routes:
        index = route if 1 <= route <= len(call.routes) else 1
        return {**call.routes[index - 1], "index": index}
    return {  # a call recorded before calls kept their routes
        "index": 1,
        "trunk": call.trunk_id,
        "deck": call.deck_id,
        "rate": call.rate_id,
        "per_minute": str(call.per_minute),
        "connect_fee": str(call.connect_fee),
        "initial": call.initial_seconds,
        "increment": call.increment_seconds,
        "free": call.free_seconds,
        "limit": call.limit_seconds,
        "label": "",
    }


_CALL_TO_SETTLE = """
    SELECT {columns}, k.name, d.version, r.prefix
    FROM telephony_callrecord c
    LEFT JOIN telephony_ratedeck d ON d.id = c.deck_id
    LEFT JOIN telephony_carrier k ON k.id = d.carrier_id
    LEFT JOIN telephony_rate r ON r.id = c.rate_id
    WHERE c.uniqueid = %s"""


def _call_to_settle(uniqueid: str) -> CallRecord | None:
    """The call, with what its rate label needs (deck_carrier, deck_version, rate_prefix).

    In SQL of its own: on every hangup, the ORM took longer than the database.
    """
    sql = _statement(
        "settle_read",
        lambda: _CALL_TO_SETTLE.format(columns=_columns(CallRecord._meta.concrete_fields, "c.")),
    )
    with bound_cursor() as cursor:
        cursor.execute(sql, [uniqueid])
        row = cursor.fetchone()
    if row is None:
        return None
    call: CallRecord = _instances([CallRecord], row[:-3])[0]
    call.deck_carrier, call.deck_version, call.rate_prefix = row[-3:]  # type: ignore[attr-defined]
    return call


def _rate_label(call: CallRecord, carried: dict[str, Any], billed: int) -> str:
    """Where the cost comes from, for the usage line; ``call`` comes from _CALL_TO_SETTLE."""
    where = carried.get("label") or (
        f"{call.deck_carrier} v{call.deck_version} +{call.rate_prefix}"  # type: ignore[attr-defined]
        if call.deck_id
        else "None +?"
    )
    free = f", first {carried['free']}s free" if carried.get("free") else ""
    return (
        f"{where}: {carried['per_minute']}/min, {carried['connect_fee']} connect, "
        f"{carried['initial']}/{carried['increment']}s{free}, {billed}s to {call.destination}"
    )


def call_abandoned(
    *,
    uniqueid: str,
    reason: str,
    caller: str = "",
    access_number: AccessNumber | None = None,
    member: User | None = None,
    node: str = "",
    is_check: bool = False,
) -> CallRecord:
    """Record a caller who hung up before the decision (nothing held, nothing billed).

    Before, such calls left no trace: operators could not tell a caller who gave up at the
    PIN prompt from one who never called.
    """
    call, _ = CallRecord.objects.get_or_create(
        uniqueid=uniqueid,
        defaults={
            "state": CallState.ABANDONED,
            "refusal": reason[:200],
            "caller": caller[:32],
            "access_number": access_number,
            "member": member,
            "node": node,
            "is_check": is_check,
        },
    )
    return call


def expire_unsettled_calls(*, now: datetime | None = None) -> int:
    """Calls that never settled and that no reconciliation could judge: free the hold.

    The last resort, for nodes without a manager interface configured or out of reach; the
    hold expires, so that a hangup that still arrives bills the call (once).
    """
    now = now or timezone.now()
    count = 0
    for call in CallRecord.objects.filter(state=CallState.AUTHORIZED).select_related("member"):
        if call.started_at + timedelta(seconds=call.limit_seconds) + HOLD_MARGIN > now:
            continue
        if CallRecord.objects.filter(pk=call.pk, state=CallState.AUTHORIZED).update(
            state=CallState.EXPIRED, ended_at=now
        ):
            credit_release(key=call.hold_key, state=HoldState.EXPIRED)
            count += 1
    return count


def settings_max_concurrency() -> int:
    return int(getattr(settings, "FASTAGI_MAX_SESSIONS", 64))
