"""Celery tasks of the commune core. Thin: load by id, call one function, be safe to re-run."""

from __future__ import annotations

import logging

from celery import shared_task
from django.contrib.sessions.models import Session
from django.db import OperationalError
from django.utils import timezone

from panel.mail import send_templated_mail
from panel.models import Application, ApplicationState, BillingPeriod, Heartbeat

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


@shared_task
def release_expired_holds() -> int:
    from panel.services.ledger import release_expired_holds as release

    return release()


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def close_period(period_id: int) -> str:
    """Run a confirmed close; a redelivery continues where the last run stopped."""
    from panel.services.closing import period_close_run

    try:
        return str(period_close_run(period_id=period_id).state)
    except Exception as exc:
        BillingPeriod.objects.filter(pk=period_id).update(
            close_error=f"{type(exc).__name__}: {exc}"
        )
        raise


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def run_bank_import(import_id: int) -> str:
    from panel.services.bank import bank_import_run

    return str(bank_import_run(import_id=import_id).state)
