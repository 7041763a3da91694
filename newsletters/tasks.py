"""Newsletter tasks: thin wrappers that take ids and call one service each."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from newsletters import services
from newsletters.smtp import SmtpError

# Waits longer than this end the task; the maintenance job starts a sender when work is due.
MAX_COUNTDOWN = 120.0


@shared_task(acks_late=True, reject_on_worker_lost=True)
def prepare_campaign(campaign_id: int) -> int:
    return services.campaign_prepare(campaign_id=campaign_id)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def send_campaign(self: Any, campaign_id: int) -> str:
    outcome = services.campaign_send(
        campaign_id=campaign_id, budget_seconds=settings.NEWSLETTER_SEND_BUDGET_SECONDS
    )
    if self.request.is_eager:
        # In-process (tests, the seed): the caller loops; a countdown would not wait.
        return f"{outcome.next} {outcome.delay:.0f}s, {outcome.sent} sent"
    if outcome.next == "continue":
        send_campaign.apply_async(args=(campaign_id,))
    elif outcome.next == "wait" and outcome.delay <= MAX_COUNTDOWN:
        send_campaign.apply_async(args=(campaign_id,), countdown=outcome.delay)
    return f"{outcome.next} {outcome.delay:.0f}s, {outcome.sent} sent"


@shared_task(acks_late=True)
def maintenance() -> dict[str, int]:
    return services.maintenance()


@shared_task(
    bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=8, default_retry_delay=60
)
def send_domain_lost(self: Any, domain_id: int) -> bool:
    try:
        return services.send_domain_lost_notice(domain_id=domain_id)
    except OSError as exc:
        if self.request.is_eager:
            raise
        raise self.retry(exc=exc, countdown=60 * 2**self.request.retries) from None


@shared_task(acks_late=True)
def purge_retention() -> dict[str, int]:
    return services.retention_purge()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_import(import_id: int) -> str:
    return str(services.import_run(import_id=import_id).state)


@shared_task(
    bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=8, default_retry_delay=60
)
def send_confirmation(self: Any, subscriber_id: int, event_id: int) -> bool:
    try:
        return services.send_confirmation(subscriber_id=subscriber_id, event_id=event_id)
    except SmtpError as exc:
        if exc.permanent or self.request.is_eager:
            raise
        raise self.retry(exc=exc, countdown=60 * 2**self.request.retries) from None


@shared_task(acks_late=True, reject_on_worker_lost=True)
def send_import_confirmations(import_id: int) -> int:
    return services.send_import_confirmations(import_id=import_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def send_test(campaign_id: int, to: str, key: str) -> None:
    services.send_test(campaign_id=campaign_id, to=to, key=key)
