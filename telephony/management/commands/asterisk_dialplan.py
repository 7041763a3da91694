"""Print the dialplan for the access numbers (the Asterisk role installs it)."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.loader import render_to_string

from telephony.models import AccessNumber

HOSTPORT = re.compile(r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")
CONTEXT = re.compile(r"^[a-z][a-z0-9_-]{0,49}$")


class Command(BaseCommand):
    help = "Render extensions_panel.conf for Asterisk."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--agi", default=settings.FASTAGI_LISTEN, help="HOST:PORT of the FastAGI server"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not HOSTPORT.match(options["agi"]):
            raise CommandError(f"--agi {options['agi']!r} is not HOST:PORT")
        numbers = list(AccessNumber.objects.order_by("context", "number"))
        for access in numbers:
            # Only allowlisted values reach the dialplan.
            if not CONTEXT.match(access.context) or not re.fullmatch(
                r"\+[1-9][0-9]{5,14}", access.number
            ):
                raise CommandError(f"access number {access.pk} has an unsafe context or number")
        self.stdout.write(
            render_to_string(
                "telephony/asterisk/extensions_panel.conf",
                {"agi": options["agi"], "access_numbers": numbers},
            ),
            ending="",
        )
