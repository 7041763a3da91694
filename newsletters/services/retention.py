"""How long the newsletters keep what is not consent: inbound messages and bounce logs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from newsletters.models import BounceEvent, InboundReport

# Rows per statement: a purge after a long pause must not hold its locks for minutes.
PURGE_BATCH = 5000


def retention_purge(*, now: datetime | None = None) -> dict[str, int]:
    """Delete inbound messages and bounce and complaint events older than the retention time.

    NEWSLETTER_RETENTION_DAYS (default 30) is longer than any MTA retries a message and than
    a bounce takes to come back, and what a report changed stays: the subscriber's status and
    bounce score, the campaign's counts, and the consent events (an unsubscribe recorded from a
    complaint among them), which the law asks to keep and the database refuses to delete.
    Events go before the messages they point to; each batch is its own transaction.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.NEWSLETTER_RETENTION_DAYS)
    return {
        "events": _purge(BounceEvent.objects.filter(at__lt=cutoff)),
        # A message an event still points to (none is younger than its event) stays.
        "messages": _purge(
            InboundReport.objects.filter(received_at__lt=cutoff, events__isnull=True)
        ),
    }


def _purge(rows: QuerySet[Any]) -> int:
    deleted = 0
    while True:
        with transaction.atomic():
            batch = list(rows.values_list("pk", flat=True)[:PURGE_BATCH])
            if not batch:
                return deleted
            deleted += rows.model.objects.filter(pk__in=batch).delete()[0]
