"""Run the FastAGI server (the Asterisk role points the dialplan at it)."""

from __future__ import annotations

import gc
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from telephony.fastagi import Server


class Command(BaseCommand):
    help = "Serve agi://HOST:PORT/authorize and /settle for Asterisk."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--listen", default=settings.FASTAGI_LISTEN, help="HOST:PORT")
        parser.add_argument("--max-sessions", type=int, default=settings.FASTAGI_MAX_SESSIONS)
        parser.add_argument("--settle-sessions", type=int, default=settings.FASTAGI_SETTLE_SESSIONS)
        parser.add_argument(
            "--db-connections",
            type=int,
            default=settings.FASTAGI_DB_CONNECTIONS,
            help="database connections the sessions' queries share",
        )
        parser.add_argument(
            "--drain-seconds",
            type=float,
            default=settings.FASTAGI_DRAIN_SECONDS,
            help="on SIGTERM, how long sessions in progress may take to finish",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, _, port = options["listen"].rpartition(":")
        server = Server(
            (host, int(port)),
            max_sessions=options["max_sessions"],
            settle_sessions=options["settle_sessions"],
            max_per_peer=settings.FASTAGI_MAX_PER_PEER,
            allow=settings.FASTAGI_ALLOW,
            db_connections=options["db_connections"],
            listen=False,
        )
        server.warm()
        # Everything loaded so far (Django, the models, the rate tables) lives as long as
        # the process. Out of the collector's sight, a full collection no longer walks it
        # all: with it in sight one took 37 ms (measured), long enough to stall the calls
        # being set up meanwhile.
        gc.collect()
        gc.freeze()
        # A deploy restarts the server with SIGTERM: stop accepting (Asterisk goes to the
        # other server), let the calls being set up and the hangups being billed finish,
        # then exit. Killed outright, it would cut callers mid-PIN and lose their settles.
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        server.server_activate()  # refused until now: Asterisk went to the other server
        serving = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="accept"
        )
        serving.start()
        self.stdout.write(f"FastAGI listening on {host}:{port}")
        self.stdout.flush()
        while not stop.wait(0.5):
            pass
        self.stdout.write("FastAGI stopping: no new sessions, waiting for those in progress")
        self.stdout.flush()
        cut = server.drain(options["drain_seconds"])
        serving.join(5)
        server.server_close()
        self.stdout.write(f"FastAGI stopped ({cut} sessions cut)")
