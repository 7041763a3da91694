"""Benchmark of the foundation issue: the dashboard's query count and render time.

Sets up its own demo co-op in a temporary state dir (SQLite by default, or DATABASE_URL),
then renders the dashboard for each demo person. Prints one `name: value` line per figure;
times are medians, with the health check (one query, no template) as the same-run baseline.

    .venv/bin/python bench/dashboard.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path; the project root goes there instead.
sys.path[0] = str(ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few repetitions")
    args = parser.parse_args()
    rounds = 20 if args.quick else 300

    state = tempfile.mkdtemp(prefix="panel-bench-")
    # Production-like settings (DEBUG off), minus HTTPS, which the test client does not speak.
    os.environ.update(
        PANEL_STATE_DIR=state,
        DEBUG="0",
        SECURE_SSL_REDIRECT="0",
        ALLOWED_HOSTS="testserver",
        EMAIL_URL="locmem:",
        LOG_LEVEL="WARNING",
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from panel.celery import app
    from panel.models import User

    app.conf.task_always_eager = True  # the seed's emails; no worker in a benchmark
    call_command("migrate", verbosity=0)
    call_command("demo_seed", stdout=open(os.devnull, "w"))  # noqa: SIM115

    def median_ms(client: Client, path: str) -> float:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        return statistics.median(samples)

    worst_queries = 0
    for email in ["alice@demo.coop", "dave@demo.coop", "carol@demo.coop"]:
        client = Client()
        client.force_login(User.objects.get(email=email))
        client.get("/dashboard/")  # warm template caches
        with CaptureQueriesContext(connection) as queries:
            client.get("/dashboard/")
        worst_queries = max(worst_queries, len(queries))

    client = Client()
    client.force_login(User.objects.get(email="alice@demo.coop"))
    client.get("/dashboard/")
    dashboard = median_ms(client, "/dashboard/")
    healthz = median_ms(client, "/healthz")
    print(f"dashboard_queries_max: {worst_queries}")
    print(f"dashboard_ms_median: {dashboard:.2f}")
    print(f"healthz_ms_median: {healthz:.2f}")
    print(f"dashboard_vs_healthz_ratio: {dashboard / healthz:.1f}")
    print(f"rounds: {rounds}")


if __name__ == "__main__":
    main()
