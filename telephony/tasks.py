"""Telephony tasks: load by id, call one service."""

from __future__ import annotations

from celery import shared_task

from telephony import services


@shared_task(acks_late=True)
def import_deck(deck_id: int) -> str:
    return str(services.deck_import(deck_id=deck_id).state)


@shared_task
def expire_unsettled_calls() -> int:
    return services.expire_unsettled_calls()
