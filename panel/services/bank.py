"""Bank statements (CSV) into member payments: validated whole, imported whole, idempotent.

A statement is checked line by line first; one bad line fails the import with every problem
listed by line number, and nothing is booked. A statement uploaded twice books nothing twice:
each row's payment has a source key made of the bank's transaction id, or of the row itself.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from panel.audit import audit_record
from panel.models import BankImport, ImportState, MemberBalance, User
from panel.services.ledger import LedgerError, booking_days, payment_record
from panel.tasking import enqueue_on_commit

MAX_BYTES = 5 * 1024 * 1024
# As the payment form: ten digits before the point is more than any member pays at once.
MAX_AMOUNT_DIGITS = 10
REQUIRED = ("date", "amount", "reference")
OPTIONAL = ("id", "counterparty")
MEMBER_REFERENCE = re.compile(r"\bCP\d{6}\b", re.IGNORECASE)
DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y")


@dataclass(frozen=True)
class BankRow:
    line: int
    day: date
    amount: Decimal
    reference: str
    counterparty: str
    bank_id: str


class BankCsvError(LedgerError):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors[:10]))


def _amount(text: str, decimal_comma: bool) -> Decimal:
    cleaned = text.strip().replace(" ", "").replace("\u00a0", "")
    for symbol in ("EUR", "€", "$", "£"):
        cleaned = cleaned.replace(symbol, "")
    if decimal_comma:
        cleaned = cleaned.replace(".", "").replace(",", ".")
    elif re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", cleaned):
        cleaned = cleaned.replace(",", "")
    if not re.fullmatch(r"[+-]?\d+(\.\d{1,2})?", cleaned):
        raise InvalidOperation(text)
    return Decimal(cleaned)


def _day(text: str) -> date:
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    raise ValueError(text)


def parse_bank_csv(content: str) -> list[BankRow]:
    """Every row of the statement, or BankCsvError with every problem and its line number."""
    if not content.strip():
        raise BankCsvError(["the file is empty"])
    sample = content[:4096]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(content), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise BankCsvError(["the file is empty"]) from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise BankCsvError([f"line 1: missing column(s) {', '.join(missing)}; found {header}"])
    unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
    if unknown:
        raise BankCsvError([f"line 1: unknown column(s) {', '.join(unknown)}"])
    decimal_comma = delimiter == ";"
    first_day, last_day = booking_days()
    rows, errors = [], []
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            errors.append(f"line {line}: {len(values)} fields, the header has {len(header)}")
            continue
        row = dict(zip(header, values, strict=True))
        problems = []
        try:
            day = _day(row["date"])
        except ValueError:
            problems.append(f"date {row['date']!r} is not YYYY-MM-DD or DD.MM.YYYY")
        else:
            if not first_day <= day <= last_day:
                problems.append(f"date {row['date']!r} is not between {first_day} and {last_day}")
        try:
            amount = _amount(row["amount"], decimal_comma)
        except InvalidOperation:
            problems.append(f"amount {row['amount']!r} is not a number with at most 2 decimals")
        else:
            if amount and amount.adjusted() >= MAX_AMOUNT_DIGITS:
                problems.append(
                    f"amount {row['amount']!r} has more than {MAX_AMOUNT_DIGITS} digits "
                    "before the point"
                )
        reference = row["reference"].strip()
        if not reference:
            problems.append("reference is empty")
        if problems:
            errors.extend(f"line {line}: {p}" for p in problems)
            continue
        rows.append(
            BankRow(
                line=line,
                day=day,
                amount=amount,
                reference=reference[:200],
                counterparty=row.get("counterparty", "").strip()[:200],
                bank_id=row.get("id", "").strip()[:100],
            )
        )
    if errors:
        raise BankCsvError(errors)
    return rows


def _source_keys(rows: list[BankRow]) -> list[str]:
    """The bank's id where given; else the row's content plus its occurrence among equal rows."""
    seen: dict[str, int] = {}
    keys = []
    for row in rows:
        if row.bank_id:
            basis = f"id|{row.bank_id}"
        else:
            basis = f"row|{row.day}|{row.amount}|{row.reference}|{row.counterparty}"
        seen[basis] = seen.get(basis, 0) + 1
        digest = hashlib.sha256(f"{basis}|{seen[basis]}".encode()).hexdigest()[:32]
        keys.append(f"bank:{digest}")
    return keys


@transaction.atomic
def bank_import_create(*, actor: User, filename: str, content: bytes) -> BankImport:
    if len(content) > MAX_BYTES:
        raise BankCsvError([f"the file is larger than {MAX_BYTES // 1024 // 1024} MB"])
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = content.decode("cp1252")
        except UnicodeDecodeError:
            raise BankCsvError(["the file is neither UTF-8 nor Windows-1252 text"]) from None
    if "\x00" in text:
        # Decodes, but no text file holds NUL (and PostgreSQL's text cannot).
        lines = [n for n, line in enumerate(text.splitlines(), 1) if "\x00" in line]
        shown = ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")
        raise BankCsvError(
            [f"line {lines[0]}: holds a NUL character (lines {shown}): it is not a text file"]
        )
    upload = BankImport.objects.create(
        uploaded_by=actor, filename=filename[:200], content=text, rows_total=text.count("\n")
    )
    audit_record(
        actor=actor,
        action="bank_import.uploaded",
        obj=upload,
        owner=None,
        after={"filename": filename},
    )
    from panel.tasks import run_bank_import

    enqueue_on_commit(run_bank_import, upload.pk)
    return upload


def bank_import_run(*, import_id: int) -> BankImport:
    claimed = BankImport.objects.filter(
        pk=import_id, state__in=[ImportState.PENDING, ImportState.RUNNING]
    ).update(state=ImportState.RUNNING)
    upload = BankImport.objects.get(pk=import_id)
    if not claimed:
        return upload  # done or failed already: a redelivered task does nothing
    try:
        rows = parse_bank_csv(upload.content)
    except BankCsvError as exc:
        BankImport.objects.filter(pk=import_id).update(
            state=ImportState.FAILED, errors=exc.errors, finished_at=timezone.now()
        )
        upload.refresh_from_db()
        return upload
    BankImport.objects.filter(pk=import_id).update(rows_total=len(rows))
    references = {
        ref.upper(): member_id
        for ref, member_id in MemberBalance.objects.values_list("payment_reference", "member_id")
    }
    members = {u.pk: u for u in User.objects.filter(pk__in=references.values())}
    imported = duplicates = 0
    unmatched: list[dict[str, str]] = []
    try:
        with transaction.atomic():
            for row, key in zip(rows, _source_keys(rows), strict=True):
                if row.amount <= 0:
                    unmatched.append(
                        {"line": str(row.line), "reference": row.reference, "why": "outgoing"}
                    )
                    continue
                found = MEMBER_REFERENCE.search(row.reference)
                member_id = references.get(found.group(0).upper()) if found else None
                if member_id is None:
                    unmatched.append(
                        {
                            "line": str(row.line),
                            "reference": row.reference,
                            "why": "no member reference",
                        }
                    )
                    continue
                try:
                    _, created = payment_record(
                        actor=upload.uploaded_by,
                        member=members[member_id],
                        amount=row.amount,
                        received_on=row.day,
                        reference=row.reference,
                        source_key=key,
                        bank_import_id=upload.pk,
                    )
                except LedgerError as exc:
                    # One row the ledger refuses (its id booked before with another amount)
                    # fails the whole statement, like a bad line: nothing is booked.
                    raise BankCsvError([f"line {row.line}: {exc}"]) from None
                imported += created
                duplicates += not created
            BankImport.objects.filter(pk=import_id).update(
                state=ImportState.DONE,
                rows_done=len(rows),
                imported=imported,
                duplicates=duplicates,
                unmatched=unmatched,
                finished_at=timezone.now(),
            )
    except BankCsvError as exc:
        BankImport.objects.filter(pk=import_id).update(
            state=ImportState.FAILED, errors=exc.errors, finished_at=timezone.now()
        )
    upload.refresh_from_db()
    return upload
