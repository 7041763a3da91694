"""Celery tasks of the commune core. Thin: load by id, call one function, be safe to re-run."""

from __future__ import annotations

import logging

from celery import shared_task
from django.contrib.sessions.models import Session
from django.utils import timezone

from panel.mail import send_templated_mail
from panel.models import Application, ApplicationState, Heartbeat

log = logging.getLogger(__name__)


@shared_task
def heartbeat() -> str:
    """Record that beat and a worker are alive; the status page reads it."""
    now = timezone.now()
    Heartbeat.objects.update_or_create(name="beat", defaults={"at": now})
    return now.isoformat()


@shared_task
def ping_database(marker: str) -> str:
    """Write a marker through the worker; the integration test reads it back."""
    Heartbeat.objects.update_or_create(name=f"ping:{marker}", defaults={"at": timezone.now()})
    return marker


@shared_task
def purge_expired_sessions() -> int:
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def send_application_decision(application_id: int) -> bool:
    """Tell the applicant the decision, once.

    The guarded UPDATE claims the email; if sending fails the claim is released so that the
    retry sends it. A redelivered task finds the claim taken and does nothing.
    """
    claimed = (
        Application.objects.filter(pk=application_id, decision_emailed_at__isnull=True)
        .exclude(state=ApplicationState.PENDING)
        .update(decision_emailed_at=timezone.now())
    )
    if not claimed:
        return False
    application = Application.objects.select_related("user").get(pk=application_id)
    template = (
        "panel/email/application_approved"
        if application.state == ApplicationState.APPROVED
        else "panel/email/application_declined"
    )
    try:
        send_templated_mail(
            template,
            to=application.user.email,
            context={"application": application},
        )
    except Exception:
        Application.objects.filter(pk=application_id).update(decision_emailed_at=None)
        raise
    return True
