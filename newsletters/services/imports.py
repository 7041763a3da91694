"""CSV imports of subscribers: every line checked, then all saved or none."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from newsletters import validation
from newsletters.models import (
    ConsentEvent,
    ConsentKind,
    ImportMode,
    ImportState,
    MailingList,
    Subscriber,
    SubscriberImport,
    SubscriberStatus,
)
from newsletters.services.common import NewsletterError, _valid
from panel.audit import audit_record
from panel.models import User
from panel.tasking import enqueue_on_commit

# Imports ---------------------------------------------------------------------------------

IMPORT_MAX_BYTES = 20 * 1024 * 1024
IMPORT_MAX_ROWS = 200_000


@transaction.atomic
def import_start(
    *,
    mlist: MailingList,
    member: User,
    filename: str,
    content: bytes,
    consent_source: str,
    mode: str,
) -> SubscriberImport:
    """Accept a CSV for import; a worker checks every line and saves all of them or none."""
    if mode not in ImportMode.values:
        raise NewsletterError(_("Choose how the addresses were confirmed."))
    source = _valid(validation.header_text, consent_source, _("The consent source"), max_length=300)
    if not source:
        raise NewsletterError(
            _("Say where these people gave their consent (a form, an event, a paper list).")
        )
    if len(content) > IMPORT_MAX_BYTES:
        raise NewsletterError(
            _("The file is larger than %(mb)d MB.") % {"mb": IMPORT_MAX_BYTES // 1024 // 1024}
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise NewsletterError(
            _("Line %(line)d is not UTF-8 text; save the file as UTF-8 CSV.") % {"line": line}
        ) from None
    job = SubscriberImport.objects.create(
        list=mlist,
        member=member,
        filename=filename[:200],
        content=text,
        consent_source=source,
        mode=mode,
    )
    audit_record(
        actor=member,
        action="newsletters.import_started",
        obj=job,
        owner=mlist.member,
        after={"filename": job.filename, "mode": mode, "consent_source": source},
    )
    from newsletters import tasks

    enqueue_on_commit(tasks.run_import, job.pk)
    return job


@dataclass
class _Row:
    line: int
    email: str
    name: str


def _parse_import(job: SubscriberImport) -> tuple[list[_Row], list[str]]:
    reader = csv.reader(io.StringIO(job.content, newline=""))
    errors: list[str] = []
    rows: list[_Row] = []
    try:
        header = next(reader)
    except StopIteration:
        return [], [_("The file is empty.")]
    except csv.Error as exc:
        return [], [_("Line 1: %(error)s") % {"error": exc}]
    columns = [h.strip().lower() for h in header]
    if "email" not in columns:
        return [], [
            _("Line 1: the first line must name the columns, one of them 'email' (found: %(c)s).")
            % {"c": ", ".join(columns)[:200]}
        ]
    at_email = columns.index("email")
    at_name = columns.index("name") if "name" in columns else None
    seen: dict[str, int] = {}
    progress_every = 2000
    ended = reader.line_num
    try:
        for record in reader:
            # A quoted field may span lines: name the line where the record starts.
            line, ended = ended + 1, reader.line_num
            if not any(field.strip() for field in record):
                continue
            if len(record) != len(columns):
                errors.append(
                    _("Line %(line)d: %(found)d fields, the header has %(want)d.")
                    % {"line": line, "found": len(record), "want": len(columns)}
                )
                continue
            try:
                address = validation.normalise_email(record[at_email])
                name = (
                    validation.header_text(record[at_name], _("The name"), max_length=100)
                    if at_name is not None
                    else ""
                )
            except validation.InvalidInput as exc:
                errors.append(_("Line %(line)d: %(error)s") % {"line": line, "error": exc})
                continue
            if address in seen:
                errors.append(
                    _("Line %(line)d: %(email)s is already on line %(first)d.")
                    % {"line": line, "email": address, "first": seen[address]}
                )
                continue
            seen[address] = line
            rows.append(_Row(line, address, name))
            if len(rows) > IMPORT_MAX_ROWS:
                errors.append(
                    _("Line %(line)d: more than %(max)d addresses in one file.")
                    % {"line": line, "max": IMPORT_MAX_ROWS}
                )
                break
            if len(rows) % progress_every == 0:
                SubscriberImport.objects.filter(pk=job.pk).update(rows_done=len(rows))
    except csv.Error as exc:
        errors.append(_("Line %(line)d: %(error)s") % {"line": reader.line_num, "error": exc})
    return rows, errors


def import_run(*, import_id: int) -> SubscriberImport:
    """Check every line, then save all rows in one transaction, or nothing with the errors.

    Retried after a crash: the write transaction either committed (the import is done) or
    left nothing, and the final guarded update lets only one run finish it.
    """
    claimed = SubscriberImport.objects.filter(
        pk=import_id, state__in=[ImportState.QUEUED, ImportState.RUNNING]
    ).update(state=ImportState.RUNNING, rows_done=0)
    job = SubscriberImport.objects.select_related("list").get(pk=import_id)
    if not claimed:
        return job
    rows, errors = _parse_import(job)
    now = timezone.now()
    if errors:
        SubscriberImport.objects.filter(pk=job.pk, state=ImportState.RUNNING).update(
            state=ImportState.FAILED,
            errors="\n".join(errors[:200])
            + (f"\n… {len(errors) - 200} more" if len(errors) > 200 else ""),
            rows_total=len(rows) + len(errors),
            finished_at=now,
        )
        job.refresh_from_db()
        return job
    with transaction.atomic():
        # The guard and the row lock: a second run of the same import waits here, then stops.
        if not SubscriberImport.objects.filter(pk=job.pk, state=ImportState.RUNNING).update(
            rows_total=len(rows)
        ):
            job.refresh_from_db()
            return job
        counts = _import_write(job, rows, now)
        SubscriberImport.objects.filter(pk=job.pk).update(
            state=ImportState.DONE, rows_done=len(rows), finished_at=now, **counts
        )
        if job.mode == ImportMode.DOUBLE_OPT_IN and counts["added"] + counts["updated"]:
            from newsletters import tasks

            enqueue_on_commit(tasks.send_import_confirmations, job.pk)
    job.refresh_from_db()
    return job


def _import_write(job: SubscriberImport, rows: list[_Row], now: datetime) -> dict[str, int]:
    mlist = job.list
    confirmed = job.mode == ImportMode.CONFIRMED
    status = SubscriberStatus.CONFIRMED if confirmed else SubscriberStatus.PENDING
    existing: dict[str, tuple[int, str]] = {}
    emails = [r.email for r in rows]
    for start in range(0, len(emails), 5000):
        for pk, email, current in Subscriber.objects.filter(
            list=mlist, email__in=emails[start : start + 5000]
        ).values_list("pk", "email", "status"):
            existing[email] = (pk, current)
    new = [r for r in rows if r.email not in existing]
    Subscriber.objects.bulk_create(
        [
            Subscriber(
                list=mlist,
                email=r.email,
                name=r.name,
                status=status,
                confirmed_at=now if confirmed else None,
                status_changed_at=now,
            )
            for r in new
        ],
        batch_size=2000,
    )
    ids = _ids_by_email(mlist, [r.email for r in new])
    # Opted-out addresses stay opted out: an import is not consent to undo an unsubscribe.
    opted_out = {
        SubscriberStatus.UNSUBSCRIBED,
        SubscriberStatus.BOUNCED,
        SubscriberStatus.COMPLAINED,
    }
    upgrade = [
        (existing[r.email][0], r)
        for r in rows
        if r.email in existing and existing[r.email][1] == SubscriberStatus.PENDING
    ]
    kept = sum(1 for r in rows if r.email in existing and existing[r.email][1] in opted_out)
    if upgrade and confirmed:
        Subscriber.objects.filter(pk__in=[pk for pk, _r in upgrade]).update(
            status=SubscriberStatus.CONFIRMED, confirmed_at=now, status_changed_at=now
        )
    events: list[ConsentEvent] = []
    source = f"import {job.pk}: {job.consent_source}"
    for pk, row in [(ids[r.email], r) for r in new] + upgrade:
        where = f"{source} ({job.filename}, line {row.line})"[:300]
        events.append(
            ConsentEvent(subscriber_id=pk, kind=ConsentKind.SUBSCRIBE, at=now, source=where)
        )
        if confirmed:
            events.append(
                ConsentEvent(subscriber_id=pk, kind=ConsentKind.CONFIRM, at=now, source=where)
            )
    ConsentEvent.objects.bulk_create(events, batch_size=5000)
    return {
        "added": len(new),
        "updated": len(upgrade),
        "kept": kept,
    }


def _ids_by_email(mlist: MailingList, emails: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(emails), 5000):
        found.update(
            Subscriber.objects.filter(
                list=mlist, email__in=emails[start : start + 5000]
            ).values_list("email", "pk")
        )
    return found
