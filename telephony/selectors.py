"""Telephony reads for pages."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q

from telephony.models import CallRecord, CallState, SettledBy
from telephony.services import HOLD_MARGIN


def live_calls(*, now: datetime) -> dict[str, Any]:
    """What operators watch: calls in progress, calls that should have ended, how calls ended.

    A call past its limit is stuck: its channel is gone and its hangup never arrived (the
    reconciliation will end it, or the expiry at the limit plus the margin). Calls ended by
    the reconciliation or never settled are the ones whose hangup did not reach a server.
    """
    in_progress = list(
        CallRecord.objects.filter(state=CallState.AUTHORIZED)
        .select_related("member", "trunk")
        .order_by("started_at")
    )
    # A minute past its limit: L() ended it by then, so its hangup went astray.
    overdue = {
        call.pk
        for call in in_progress
        if call.started_at + timedelta(seconds=call.limit_seconds + 60) < now
    }
    recent = now - timedelta(hours=24)
    return {
        "calls": [call for call in in_progress if call.pk not in overdue],
        "stuck": [call for call in in_progress if call.pk in overdue],
        "unusual": CallRecord.objects.filter(started_at__gte=recent)
        .filter(
            Q(state=CallState.EXPIRED)
            | Q(settled_by__in=[SettledBy.RECONCILIATION, SettledBy.CHANNEL_GONE, SettledBy.SERVER])
        )
        .select_related("member")
        .order_by("-started_at")[:50],
        "abandoned": CallRecord.objects.filter(
            started_at__gte=now - timedelta(hours=1), state=CallState.ABANDONED
        ).count(),
        "refused": CallRecord.objects.filter(
            started_at__gte=now - timedelta(hours=1), state=CallState.REFUSED
        ).count(),
        "expiry_margin": HOLD_MARGIN,
    }
