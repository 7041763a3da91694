"""Run the deduplicating SMTP relay (newsletters.relay) until SIGTERM or SIGINT.

A management command, so that the relay can run from the panel's release and virtualenv under
the same service manager as the rest; it needs the settings only for STATE_DIR. A mail node runs
the same code without Django: `python3 relay.py ...` (newsletters.relay.main), same options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from newsletters.relay import add_arguments, relay_from_options, serve, summary


class Command(BaseCommand):
    help = (
        "Run the SMTP relay that forwards each Message-ID once and answers 250 to repeats, "
        "until SIGTERM or SIGINT."
    )
    # The relay uses neither models nor the database; it should start even when they are down.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(
            parser,
            store_help=(
                "SQLite file of the accepted Message-IDs (default: STATE_DIR/relay/seen.sqlite3)"
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        store = options["store"] or Path(settings.STATE_DIR) / "relay" / "seen.sqlite3"
        try:
            relay = relay_from_options(options, store)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        def announce(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            serve(relay, announce=announce)
        except OSError as exc:
            raise CommandError(f"cannot listen on {relay.host}:{relay.port}: {exc}") from exc
        self.stdout.write(summary(relay))
