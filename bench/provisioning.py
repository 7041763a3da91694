"""Benchmark of the hosting issue: from "create site" to HTTP 200 on a real test node.

Starts a test host (tests/hosts: Debian chroot with sshd, nginx, the agent), a throw-away
PostgreSQL database, and runs jobs the way workers do (job_run; 4 threads for the batch of
100, like 4 worker processes). Prints `name: value` lines; needs root (namespaces), like the
test suite.

    .venv/bin/python bench/provisioning.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where this file would shadow the
# package of the same name; the project root goes there instead.
sys.path[0] = str(ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5 timed sites, 20 in the batch")
    args = parser.parse_args()
    timed, batch = (5, 20) if args.quick else (20, 100)

    import psycopg

    from bench.ledger import admin_url  # the same throw-away database helper

    admin = admin_url()
    name = f"panel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        run(admin.rsplit("/", 1)[0] + f"/{name}", timed, batch)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(database_url: str, timed: int, batch: int) -> None:
    state = tempfile.mkdtemp(prefix="panel-bench-")
    os.environ.update(
        DATABASE_URL=database_url,
        PANEL_STATE_DIR=state,
        DEBUG="0",
        LOG_LEVEL="WARNING",
        EMAIL_URL="locmem:",
        CELERY_TASK_ALWAYS_EAGER="0",
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from panel.celery import app
    from panel.models import Membership, User
    from provisioning import services, ssh
    from provisioning.models import Job, JobState, Node, NodeStatus
    from tests.hosts.rootfs import ensure_rootfs
    from tests.hosts.testhost import TestHost

    # Jobs are run here, by job_run; messages go to a queue nobody reads, deleted at the end.
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    app.conf.task_default_queue = queue
    call_command("migrate", verbosity=0)
    member = User.objects.create_user(email="bench@bench.coop", password=None)
    Membership.objects.create(user=member, status="member", name="Bench")
    host = TestHost(
        rootfs=ensure_rootfs(),
        workdir=Path(tempfile.mkdtemp()),
        panel_public_key=ssh.panel_public_key(),
    )
    host.start()
    try:
        Node.objects.create(
            name="bench",
            ssh_host="127.0.0.1",
            ssh_port=host.ssh_port,
            host_key=host.host_key,
            status=NodeStatus.AVAILABLE,
            capacity=batch + timed + 10,
        )

        def create_and_run(domain: str) -> bool:
            site = services.site_create(member=member, domain=domain)
            for job in Job.objects.filter(site=site):
                for _ in range(5):
                    try:
                        services.job_run(job_id=job.pk)
                        break
                    except services.Retry:
                        Job.objects.filter(pk=job.pk).update(next_retry_at=None)
            ok = Job.objects.filter(site=site, state=JobState.OK).count() == 1
            connection.close()
            return ok

        def ready(domain: str, limit: float = 30.0) -> bool:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                if host.http(domain, timeout=2)[0] == 200:
                    return True
                time.sleep(0.02)
            return False

        seconds = []
        failed = 0
        for n in range(timed):
            domain = f"timed{n}.bench.example"
            began = time.perf_counter()
            ok = create_and_run(domain) and ready(domain)
            seconds.append(time.perf_counter() - began)
            failed += not ok

        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(
                pool.map(create_and_run, [f"many{n}.bench.example" for n in range(batch)])
            )
        served = [ready(f"many{n}.bench.example", 10) for n in range(batch)]
        hundred = time.perf_counter() - began
        failed += sum(1 for ok, up in zip(results, served, strict=True) if not (ok and up))
    finally:
        host.stop()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)  # type: ignore[attr-defined]

    print(f"site_ready_p50_s: {statistics.median(seconds):.2f}")
    print(f"site_ready_max_s: {max(seconds):.2f}")
    print(f"hundred_sites_s: {hundred:.1f}")
    print(f"failed: {failed}")
    print(f"batch_size: {batch}")


if __name__ == "__main__":
    main()
