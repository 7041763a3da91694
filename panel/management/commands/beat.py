"""``manage.py beat [--poll S] [-- celery beat options]``: beat, one in the cluster."""

from __future__ import annotations

import signal
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from panel.leader import Leader


class Command(BaseCommand):
    help = (
        "Run Celery beat on the host that holds the database's beat lock; on the others, wait "
        "to take over (panel/leader.py)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--poll", type=float, default=5.0, help="seconds between checks of the lock"
        )
        parser.add_argument("beat_args", nargs="*", help="options for celery beat, after --")

    def handle(self, *args: Any, **options: Any) -> None:
        leader = Leader(options["beat_args"], poll=options["poll"])
        signal.signal(signal.SIGTERM, leader.stop)
        signal.signal(signal.SIGINT, leader.stop)
        sys.exit(leader.run())
