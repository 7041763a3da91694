"""Fixtures for hosting tests: a real node (see testhost.py) and the panel's view of it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from panel.celery import app as celery_app
from panel.models import Supplier
from panel.services import ledger
from provisioning import ssh
from provisioning.models import Job, Node, NodeStatus, Site
from provisioning.services import Retry, job_run
from tests.hosts.rootfs import ensure_rootfs
from tests.hosts.testhost import TestHost


@pytest.fixture(scope="session")
def testhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHost]:
    host = TestHost(
        rootfs=ensure_rootfs(),
        workdir=tmp_path_factory.mktemp("testhost"),
        panel_public_key=ssh.panel_public_key(),
    )
    host.start()
    yield host
    host.stop()


@pytest.fixture
def held_jobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Jobs go to the real broker, into a queue nobody consumes; tests run them with run_jobs.

    That lets a test stop between attempts (sshd down, then up). Tests that use the real
    worker (celery_worker) leave the queue to it.
    """
    if "celery_worker" in request.fixturenames:
        yield
        return
    queue = f"held-{uuid.uuid4().hex[:10]}"
    old = (celery_app.conf.task_always_eager, celery_app.conf.task_default_queue)
    celery_app.conf.task_always_eager, celery_app.conf.task_default_queue = False, queue
    try:
        yield
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_default_queue = old
        from tests.conftest import delete_queue

        delete_queue(queue)


@pytest.fixture
def node(db: None, testhost: TestHost, held_jobs: None) -> Node:
    return Node.objects.create(
        name="node1",
        ssh_host="127.0.0.1",
        ssh_port=testhost.ssh_port,
        host_key=testhost.host_key,
        status=NodeStatus.AVAILABLE,
        capacity=500,
    )


@pytest.fixture
def hosting_rates(db: None, carol) -> None:
    supplier = Supplier.objects.create(name="Serverhaus")
    for kind, unit, cost in [("disk", "GB-month", "0.04"), ("transfer", "GB", "0.001")]:
        ledger.cost_rate_set(
            actor=carol,
            service="hosting",
            kind=kind,
            unit=unit,
            unit_cost=Decimal(cost),
            supplier=supplier,
            reference="price list",
            valid_from=timezone.localdate().replace(day=1),
        )


def run_jobs(site: Site | None = None, *, rounds: int = 10) -> list[Job]:
    """Run every pending job in-process, as a worker would, until none is left."""
    for _ in range(rounds):
        pending = Job.objects.filter(state__in=["pending", "soft_error"])
        if site is not None:
            pending = pending.filter(site=site)
        if not pending.exists():
            break
        for job in pending.order_by("id"):
            try:
                job_run(job_id=job.pk)
            except Retry:
                Job.objects.filter(pk=job.pk).update(next_retry_at=None)
    return list(Job.objects.order_by("id"))


def site_files(testhost: TestHost, site: Site) -> Path:
    return Path(f"/srv/sites/{site.system_user}")
