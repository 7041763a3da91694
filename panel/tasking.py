"""Enqueueing tasks only once the data they read is committed.

A task sent inside a transaction can start before the commit and find nothing, or run for a
change that was rolled back. Every enqueue in the project goes through this helper.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Task
from django.db import transaction


def enqueue_on_commit(task: Task, *args: Any, using: str | None = None, **options: Any) -> None:
    """Send ``task`` with positional ``args`` after the current transaction commits.

    Tasks take ids, not objects: by the time a worker runs, objects may have changed.
    ``options`` go to ``apply_async`` (``countdown``, ``task_id`` for deduplication, ...).
    """
    transaction.on_commit(partial(task.apply_async, args=args, **options), using=using)
