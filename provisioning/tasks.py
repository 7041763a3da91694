"""Hosting tasks: thin wrappers that load by id and call one service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from provisioning import services
from provisioning.models import Node, NodeKind, NodeStatus


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Any, job_id: int) -> str:
    try:
        return str(services.job_run(job_id=job_id).state)
    except services.Retry as retry:
        if self.request.is_eager:
            # Run in-process (tests, the seed): a countdown would not wait; beat retries it.
            return f"retry due in {retry.delay}s"
        # A new message, not a Celery retry: the job row holds the attempt count and backoff.
        run_job.apply_async(args=(job_id,), countdown=retry.delay)
        return f"retry in {retry.delay}s"


@shared_task
def retry_stuck_jobs() -> int:
    return services.retry_stuck_jobs()


@shared_task
def purge_due_sites() -> int:
    return services.purge_due_sites()


@shared_task
def collect_usage() -> int:
    """Beat: meter every available node (one failing node does not stop the others)."""
    recorded = 0
    for node in Node.objects.filter(
        kind=NodeKind.HOSTING, status__in=[NodeStatus.AVAILABLE, NodeStatus.DRAINING]
    ):
        try:
            recorded += services.collect_usage(node=node)
        except services.ssh.AgentError:
            continue
    return recorded


@shared_task(acks_late=True, reject_on_worker_lost=True)
def enroll_node(enrollment_id: int) -> str:
    return str(services.enrollment_run(enrollment_id=enrollment_id).state)


@shared_task
def check_domain_proofs() -> int:
    """Beat: look up the names that wait for proof (claimed in the last days)."""
    return services.domains_check_pending()
