from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from panel.selectors import heartbeat_at
from panel.workers import worker_status


class Command(BaseCommand):
    help = "Ask the Celery workers to answer a ping; exits 1 when none answers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=2.0)

    def handle(self, *args: Any, **options: Any) -> None:
        status = worker_status(timeout=options["timeout"])
        beat = heartbeat_at("beat")
        self.stdout.write(f"beat: last heartbeat {beat.at.isoformat() if beat else 'never'}")
        if not status.reachable:
            raise CommandError(f"no worker answered {status.error}".strip())
        for name in status.workers:
            self.stdout.write(f"worker: {name} answers")
