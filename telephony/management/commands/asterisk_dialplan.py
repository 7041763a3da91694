"""Print the dialplan for the access numbers (the Asterisk role installs it)."""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.loader import render_to_string

from telephony.models import AccessNumber

HOSTPORT = re.compile(r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")
CONTEXT = re.compile(r"^[a-z][a-z0-9_-]{0,49}$")
NODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
E164 = re.compile(r"^\+[1-9][0-9]{5,14}$")


def did_forms(number: str, country: str) -> list[str]:
    """The ways a carrier may deliver the access number as the dialled extension.

    E.164 with and without the plus, with 00, and national: carriers differ, and a DID
    that matches no extension would drop the call before anyone answers it.
    """
    digits = number[1:]
    forms = [number, digits, f"00{digits}"]
    try:
        parsed = phonenumbers.parse(number, country or None)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is not None:
        national = re.sub(
            r"\D",
            "",
            phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL),
        )
        if national and national not in forms:
            forms.append(national)
    return forms


class Command(BaseCommand):
    help = "Render extensions_panel.conf for Asterisk."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--agi",
            default=settings.FASTAGI_LISTEN,
            help="HOST:PORT of the FastAGI servers, comma-separated (tried in turn)",
        )
        parser.add_argument(
            "--node",
            default="asterisk",
            help="this Asterisk node's name, as in ASTERISK_AMI (its calls are reconciled there)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        servers = [s.strip() for s in options["agi"].split(",")]
        if not servers or any(not HOSTPORT.match(s) for s in servers):
            raise CommandError(f"--agi {options['agi']!r} is not HOST:PORT[,HOST:PORT...]")
        if len(servers) > 9:
            raise CommandError("--agi lists more than 9 FastAGI servers")
        if not NODE.match(options["node"]):
            raise CommandError(f"--node {options['node']!r} does not match {NODE.pattern}")
        numbers = list(AccessNumber.objects.order_by("context", "number"))
        contexts: dict[str, list[tuple[AccessNumber, str, list[str]]]] = {}
        claimed: dict[tuple[str, str], str] = {}
        for access in numbers:
            # Only allowlisted values reach the dialplan.
            if not CONTEXT.match(access.context) or not E164.match(access.number):
                raise CommandError(f"access number {access.pk} has an unsafe context or number")
            forms = did_forms(access.number, access.country)
            for form in forms:
                other = claimed.setdefault((access.context, form), access.number)
                if other != access.number:
                    raise CommandError(
                        f"{access.number} and {other} are both {form} in context {access.context}"
                    )
            # The city goes into a comment: nothing but plain characters, never a line break.
            city = re.sub(r"[^\w .,'()-]", "", access.city)[:60]
            contexts.setdefault(access.context, []).append((access, city, forms))
        self.stdout.write(
            render_to_string(
                "telephony/asterisk/extensions_panel.conf",
                {
                    "agi": ",".join(servers),
                    "servers": "&".join(servers),
                    "server_count": len(servers),
                    # Each server twice: a settle refused by a server that was restarting
                    # gets another chance before it is left to the reconciliation.
                    "settle_attempts": 2 * len(servers),
                    "node": options["node"],
                    "contexts": contexts,
                },
            ),
            ending="",
        )
