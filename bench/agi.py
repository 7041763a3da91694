"""Benchmark of the telephony issue: call setups against one FastAGI server process.

Creates a throw-away PostgreSQL database, imports a 200,000-prefix deck (timed), makes members
with verified phones and credit, starts ``manage.py fastagi`` as its own process, and drives
it with simulated Asterisk connections (the caller keys in at once): authorize, then settle.
Prints `name: value` lines; latencies are of the whole authorize session.

    .venv/bin/python bench/agi.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path; the project root goes there instead.
sys.path[0] = str(ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20,000 prefixes, 300 calls")
    args = parser.parse_args()
    prefixes, calls, clients = (20_000, 300, 8) if args.quick else (200_000, 3000, 16)
    clients = int(os.environ.get("BENCH_CLIENTS", clients))

    import psycopg

    from bench.ledger import admin_url

    admin = admin_url()
    name = f"panel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        run(admin.rsplit("/", 1)[0] + f"/{name}", prefixes, calls, clients)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(database_url: str, prefixes: int, calls: int, clients: int) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PANEL_STATE_DIR": tempfile.mkdtemp(prefix="panel-bench-"),
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "EMAIL_URL": "locmem:",
        "CELERY_TASK_ALWAYS_EAGER": "1",
    }
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    from datetime import timedelta
    from decimal import Decimal

    from django.core.management import call_command
    from django.utils import timezone

    from panel.models import Membership, Supplier, User
    from panel.services import ledger
    from telephony import asterisk_sim, services
    from telephony.models import AccessNumber, CallPlan, Carrier, Phone, Trunk

    call_command("migrate", verbosity=0)
    carrier = Carrier.objects.create(name="Bench", supplier=Supplier.objects.create(name="Bench"))
    Trunk.objects.create(
        carrier=carrier, name="bench", dial_template="PJSIP/{number}@bench", priority=1
    )
    lines = [b"prefix,destination,rate,increment,connect_fee"]
    # Seven-digit prefixes from 4930000 on: Berlin numbers hit the deepest ones.
    lines += [
        b"%d,Destination %d,0.%06d,60/1,0" % (4930000 + n, n, 100 + n % 9000)
        for n in range(prefixes - 1)
    ]
    lines.append(b"49,Germany,0.010000,60/60,0")
    began = time.perf_counter()
    deck = services.deck_upload(
        carrier=carrier,
        actor=None,
        filename="bench.csv",
        content=b"\n".join(lines) + b"\n",
        mapping=services.PRESETS["standard"],
        effective_from=timezone.now() - timedelta(minutes=1),
    )
    services.deck_import(deck_id=deck.pk)
    deck_seconds = time.perf_counter() - began
    access = AccessNumber.objects.create(number="+4930900900", city="Berlin", country="DE")
    members = []
    for n in range(clients):
        user = User.objects.create_user(email=f"caller{n}@bench.coop", password=None)
        Membership.objects.create(user=user, status="member", name=user.email)
        phone = Phone.objects.create(
            member=user, number=f"+49151000{n:05d}", verified_at=timezone.now()
        )
        services.plan_for(user)
        CallPlan.objects.filter(member=user).update(max_concurrent=4, per_call_cap=Decimal("1.00"))
        ledger.payment_record(
            actor=None,
            member=user,
            amount=Decimal("1000.00"),
            received_on=timezone.localdate(),
            reference="bench",
            source_key=f"bench-{n}",
        )
        members.append(phone.number)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(  # noqa: S603  (our own manage.py, fixed arguments)
        [
            sys.executable,
            *(
                ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
                if os.environ.get("BENCH_PROFILE")
                else []
            ),
            "manage.py",
            "fastagi",
            "--listen",
            f"127.0.0.1:{port}",
            "--max-sessions",
            "64",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the FastAGI server did not start") from None
                time.sleep(0.1)
        latencies: list[float] = []
        refused = 0
        lock = threading.Lock()
        per_client = calls // clients

        def client(n: int) -> None:
            nonlocal refused
            for k in range(per_client):
                uniqueid = f"bench-{n}-{k}"
                started = time.perf_counter()
                done = asterisk_sim.run(
                    asterisk_sim.Call(
                        uniqueid=uniqueid,
                        caller=members[n],
                        access=access.number,
                        args=[access.number],
                        dtmf=[f"030{(n * 7919 + k) % 10_000_000:07d}"],
                    ),
                    "127.0.0.1",
                    port,
                )
                elapsed = (time.perf_counter() - started) * 1000
                asterisk_sim.run(
                    asterisk_sim.Call(
                        uniqueid=uniqueid,
                        caller="",
                        access="",
                        script="settle",
                        args=["ANSWER", "100", "130"],
                    ),
                    "127.0.0.1",
                    port,
                )
                with lock:
                    latencies.append(elapsed)
                    refused += done.variables.get("AUTH_RESULT") != "OK"

        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
    finally:
        server.send_signal(2)  # SIGINT: the server stops cleanly (and a profiler writes out)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    latencies.sort()
    print(f"setups_per_s: {len(latencies) / wall:.0f}")
    print(f"authorize_p50_ms: {statistics.median(latencies):.2f}")
    print(f"authorize_p99_ms: {latencies[int(len(latencies) * 0.99) - 1]:.2f}")
    print(f"deck_import_s: {deck_seconds:.1f}")
    print(f"calls: {len(latencies)}")
    print(f"refused: {refused}")
    print(f"deck_prefixes: {prefixes}")


if __name__ == "__main__":
    main()
