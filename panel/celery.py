"""The Celery application; tasks are found in each app's ``tasks`` module."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

from panel.env import env_int

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

app = Celery("panel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Every periodic job of the project, in one place. Names, not imports: `panel` must not import
# the service apps, whose jobs are added here by name as they arrive.
app.conf.beat_schedule = {
    "heartbeat": {"task": "panel.tasks.heartbeat", "schedule": 60.0},
    "release-expired-holds": {"task": "panel.tasks.release_expired_holds", "schedule": 60.0},
    "hosting-retry-stuck-jobs": {"task": "provisioning.tasks.retry_stuck_jobs", "schedule": 60.0},
    "hosting-purge-due-sites": {
        "task": "provisioning.tasks.purge_due_sites",
        "schedule": crontab(minute="5"),
    },
    # Names claimed for sites are served once their DNS proves them (provisioning.dnsproof).
    "hosting-check-domain-proofs": {
        "task": "provisioning.tasks.check_domain_proofs",
        "schedule": 300.0,
    },
    "hosting-collect-usage": {
        "task": "provisioning.tasks.collect_usage",
        "schedule": crontab(minute="0"),
    },
    "newsletters-maintenance": {
        "task": "newsletters.tasks.maintenance",
        # Read here, not from settings: this module is imported before Django is set up.
        "schedule": float(env_int("NEWSLETTER_MAINTENANCE_SECONDS", 30, minimum=1)),
    },
    "newsletters-retention": {"task": "newsletters.tasks.purge_retention", "schedule": 86400.0},
    "calls-expire-unsettled": {"task": "telephony.tasks.expire_unsettled_calls", "schedule": 60.0},
    # A hangup that reached no FastAGI server is billed from what Asterisk kept, and a call
    # whose channel is gone frees its hold, within a pass (ASTERISK_AMI names the nodes).
    "calls-reconcile": {"task": "telephony.tasks.reconcile_calls", "schedule": 30.0},
    "calls-pin-lock-notices": {"task": "telephony.tasks.notify_pin_locks", "schedule": 60.0},
    "rate-decks-fail-stale-imports": {
        "task": "telephony.tasks.fail_stale_deck_imports",
        "schedule": 300.0,
    },
    "purge-expired-sessions": {
        "task": "panel.tasks.purge_expired_sessions",
        "schedule": crontab(hour="3", minute="17"),
    },
}
