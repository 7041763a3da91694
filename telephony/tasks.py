"""Telephony tasks: load by id, call one service."""

from __future__ import annotations

from celery import shared_task

from telephony import reconcile, services


@shared_task(acks_late=True)
def import_deck(deck_id: int) -> str:
    return str(services.deck_import(deck_id=deck_id).state)


@shared_task
def fail_stale_deck_imports() -> int:
    return services.fail_stale_deck_imports()


@shared_task
def expire_unsettled_calls() -> int:
    return services.expire_unsettled_calls()


@shared_task
def reconcile_calls() -> dict[str, str]:
    """Settle what Asterisk kept and end calls whose channel is gone (every 30 s)."""
    return {node: str(result) for node, result in reconcile.reconcile_all().items()}


@shared_task
def notify_pin_locks() -> int:
    return services.pin_lock_notices()
