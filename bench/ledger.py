"""Benchmark of the ledger issue: bulk usage ingestion and a period close, on PostgreSQL.

Creates a throw-away database on the local PostgreSQL (the role bin/test creates, or
BENCH_ADMIN_URL=postgres://user:pw@host:port/postgres), migrates it, makes 1,000 members with
shares, ingests 1,000,000 usage events through record_usage_batch in batches of 10,000, then
closes the period. Prints one `name: value` line per figure; the baseline is a plain COPY of the
same rows into an unindexed table, measured in the same run.

    .venv/bin/python bench/ledger.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path; the project root goes there instead.
sys.path[0] = str(ROOT)


def admin_url() -> str:
    if os.environ.get("BENCH_ADMIN_URL"):
        return os.environ["BENCH_ADMIN_URL"]
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    password = (state / "commune-panel" / "test-db-password").read_text().strip()
    return f"postgres://panel_test:{password}@127.0.0.1:5432/postgres"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100 members, 50,000 events")
    args = parser.parse_args()
    members_n, events_n, batch = (100, 50_000, 5_000) if args.quick else (1_000, 1_000_000, 10_000)

    import psycopg

    admin = admin_url()
    name = f"panel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        run(admin.rsplit("/", 1)[0] + f"/{name}", members_n, events_n, batch)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(database_url: str, members_n: int, events_n: int, batch: int) -> None:
    import tempfile

    os.environ.update(
        DATABASE_URL=database_url,
        PANEL_STATE_DIR=tempfile.mkdtemp(prefix="panel-bench-"),
        DEBUG="0",
        LOG_LEVEL="WARNING",
        EMAIL_URL="locmem:",
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    from datetime import date, datetime, timedelta
    from decimal import Decimal

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from panel.celery import app
    from panel.models import Application, Membership, Share, Statutes, User
    from panel.services import closing, ledger
    from panel.services.ledger import UsageInput

    app.conf.task_always_eager = True
    call_command("migrate", verbosity=0)
    admin = User.objects.create_superuser(email="carol@bench.coop", password=None)
    statutes = Statutes.objects.create(version=1, title="S", text="S")
    users = User.objects.bulk_create(
        [User(email=f"m{i}@bench.coop", password="!") for i in range(members_n)]  # noqa: S106
    )
    start = timezone.make_aware(datetime(2026, 10, 1))
    apps = Application.objects.bulk_create(
        [
            Application(
                user=u,
                name=u.email,
                statement="-",
                statutes=statutes,
                agreed_at=start,
                state="approved",
                decided_at=start,
            )
            for u in users
        ]
    )
    Membership.objects.bulk_create(
        [Membership(user=u, status="member", name=u.email) for u in users]
    )
    Share.objects.bulk_create(
        [
            Share(user=u, application=a, issued_at=start - timedelta(days=30))
            for u, a in zip(users, apps, strict=True)
        ]
    )
    october = ledger.period_for(date(2026, 10, 1))
    supplier = __import__("panel.models", fromlist=["Supplier"]).Supplier.objects.create(
        name="Carrier"
    )
    ledger.supplier_invoice_record(
        actor=admin,
        supplier=supplier,
        service="calls",
        period=october,
        reference="C-10",
        invoice_date=date(2026, 10, 31),
        amount=Decimal("1000.00"),
    )
    ids = [u.pk for u in users]
    seconds_in_month = 31 * 24 * 3600 - 1

    def chunk(offset: int, size: int) -> list[UsageInput]:
        return [
            UsageInput(
                member_id=ids[(offset + i) % len(ids)],
                service="calls",
                kind="call",
                quantity=Decimal((offset + i) % 600 + 1),
                unit="second",
                unit_cost=Decimal("0.000205"),
                cost_source="Carrier deck v7, row 4711",
                occurred_at=start + timedelta(seconds=(offset + i) * 7919 % seconds_in_month),
                source_key=f"cdr-{offset + i}",
            )
            for i in range(size)
        ]

    # Baseline: the same rows, COPY'd into an unindexed table (the floor for any ingest path).
    sample = chunk(0, batch)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE bench_copy (m bigint, k text, q numeric, t timestamptz)")
        began = time.perf_counter()
        with cursor.cursor.copy("COPY bench_copy FROM STDIN") as copy:
            for e in sample:
                copy.write_row((e.member_id, e.source_key, e.quantity, e.occurred_at))
        baseline = len(sample) / (time.perf_counter() - began)

    rates = []
    began = time.perf_counter()
    for offset in range(0, events_n, batch):
        events = chunk(offset, min(batch, events_n - offset))
        t0 = time.perf_counter()
        ledger.record_usage_batch(events=events)
        rates.append(len(events) / (time.perf_counter() - t0))
    ingest_seconds = time.perf_counter() - began

    # Replaying one batch must insert nothing (and shows the cost of the duplicate check).
    replay = ledger.record_usage_batch(events=chunk(0, batch))
    assert replay.inserted == 0

    began = time.perf_counter()
    closing.period_close_start(period=october, actor=admin)
    period = closing.period_close_run(period_id=october.pk)
    close_seconds = time.perf_counter() - began
    debit, credit = ledger.ledger_totals()
    assert debit == credit
    assert period.state == "closed"

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ingest_events_per_s: {events_n / ingest_seconds:.0f}")
    print(f"ingest_batch_events_per_s_median: {statistics.median(rates):.0f}")
    print(f"baseline_copy_events_per_s: {baseline:.0f}")
    print(f"ingest_vs_copy_ratio: {events_n / ingest_seconds / baseline:.3f}")
    print(f"close_s: {close_seconds:.1f}")
    print(f"peak_rss_mb: {peak_mb:.0f}")
    print(f"members: {members_n}")
    print(f"events: {events_n}")
    print(f"period_result: {period.result}")


if __name__ == "__main__":
    main()
