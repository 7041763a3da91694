"""Play one dial-in call against a running FastAGI server, as Asterisk would, and report."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from telephony import asterisk_sim
from telephony.models import AccessNumber


class Command(BaseCommand):
    help = "Speak the Asterisk side of AGI to the server: authorize (then an unanswered settle)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="caller", required=True, help="caller ID, E.164")
        parser.add_argument(
            "--to", dest="destination", required=True, help="what the caller keys in"
        )
        parser.add_argument("--access", help="access number called (default: the first one)")
        parser.add_argument("--server", default=settings.FASTAGI_LISTEN, help="HOST:PORT")
        parser.add_argument("--pin", default="", help="keyed in when asked for a PIN")
        parser.add_argument("--account", default="", help="keyed in when asked for an account")

    def handle(self, *args: Any, **options: Any) -> None:
        access = options["access"] or getattr(AccessNumber.objects.first(), "number", "")
        if not access:
            raise CommandError("no access number: give --access or add one")
        host, _, port = options["server"].rpartition(":")
        digits = options["destination"].replace("+", "00")
        dtmf = [d for d in (options["account"], options["pin"]) if d] + [digits]
        # "check": the record is kept out of the member's call history.
        call = asterisk_sim.Call(
            uniqueid=f"check-{secrets.token_hex(6)}",
            caller=options["caller"],
            access=access,
            script="authorize?check=1",
            args=[access, options["caller"], "check"],
            dtmf=dtmf,
        )
        try:
            asterisk_sim.run(call, host or "127.0.0.1", int(port))
        except OSError as exc:
            raise CommandError(
                f"cannot reach the FastAGI server at {options['server']}: {exc}"
            ) from None
        variables = call.variables
        decision = variables.get("AUTH_RESULT", "NONE")
        self.stdout.write(f"decision: {decision}")
        if decision != "OK":
            self.stdout.write(f"reason: {variables.get('AUTH_REASON', '(none given)')}")
            return
        for n in range(1, int(variables.get("DIAL_COUNT", "0")) + 1):
            limit = int(variables[f"LIMIT_MS_{n}"]) // 1000
            self.stdout.write(f"dial string {n}: {variables[f'DIAL_STRING_{n}']} (limit {limit} s)")
        # Nothing was dialled: settle as unanswered so that the hold is freed at once.
        settled = asterisk_sim.run(
            asterisk_sim.Call(
                uniqueid=call.uniqueid,
                caller=call.caller,
                access=access,
                script="settle",
                args=["CHECK", "", "", "1", variables.get("SETTLE_TOKEN", "")],
            ),
            host or "127.0.0.1",
            int(port),
        )
        if settled.variables.get("SETTLED") != "OK":
            raise CommandError(f"the settle was not taken: {settled.variables.get('SETTLED')}")
        self.stdout.write("settled as unanswered: nothing charged")
