"""What goes wrong on the way to a node, and what the panel does about it."""

from __future__ import annotations

import pytest

from provisioning import services
from provisioning.models import Job, JobState, Node
from provisioning.services import Retry, job_run

pytestmark = pytest.mark.django_db(transaction=True)


def test_sshd_down_is_transient_and_the_retry_succeeds_once(alice, node, testhost):
    testhost.stop_sshd()
    try:
        site = services.site_create(member=alice, domain="flaky.example.org")
        job = Job.objects.get(site=site)
        with pytest.raises(Retry) as retry:
            job_run(job_id=job.pk)
        job.refresh_from_db()
        assert job.state == JobState.SOFT_ERROR
        assert "cannot reach" in job.error
        assert retry.value.delay == 2
        assert job.next_retry_at is not None
    finally:
        testhost.start_sshd()
    Job.objects.filter(pk=job.pk).update(next_retry_at=None)
    job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == JobState.OK
    assert job.attempts == 2
    assert testhost.http("flaky.example.org")[0] == 200
    user = site.system_user
    assert testhost.run(["sh", "-c", f"getent passwd {user} | wc -l"]).strip() == "1"
    assert (
        testhost.run(["sh", "-c", f"ls /etc/nginx/panel-sites/ | grep -c '^{user}.conf$'"]).strip()
        == "1"
    )


def test_a_repeated_job_uuid_does_nothing_twice(alice, node, testhost):
    from provisioning import ssh
    from provisioning.services import endpoint_for

    site = services.site_create(member=alice, domain="twice.example.org")
    job = Job.objects.get(site=site)
    job_run(job_id=job.pk)
    again = ssh.call_agent(
        endpoint_for(node), {"uuid": str(job.uuid), "verb": job.verb, "spec": job.spec}
    )
    assert again.get("replayed") is True


def test_a_changed_host_key_is_permanent_and_nothing_is_done(alice, node, testhost):
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKHY72knJqwUB6UqRBlg0yk36lFXrzY6fdrYYCyKtJQ"
    Node.objects.filter(pk=node.pk).update(host_key=other)
    site = services.site_create(member=alice, domain="mitm.example.org")
    job = Job.objects.get(site=site)
    job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == JobState.HARD_ERROR
    assert "host key changed" in job.error
    assert job.attempts == 1
    assert job.admins_told
    assert not testhost.exists(f"/etc/nginx/panel-sites/{site.system_user}.conf")
    # Fixed by an admin, the member retries from the panel and it goes through.
    Node.objects.filter(pk=node.pk).update(host_key=testhost.host_key)
    services.job_retry(job=job, actor=alice)
    job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == JobState.OK


def test_retries_run_out_into_a_hard_error(alice, node, testhost, settings, mailoutbox):
    settings.JOB_MAX_ATTEMPTS = 2
    settings.ADMINS = [("Admins", "admins@example.org")]
    testhost.stop_sshd()
    try:
        site = services.site_create(member=alice, domain="down.example.org")
        job = Job.objects.get(site=site)
        with pytest.raises(Retry):
            job_run(job_id=job.pk)
        Job.objects.filter(pk=job.pk).update(next_retry_at=None)
        job_run(job_id=job.pk)
    finally:
        testhost.start_sshd()
    job.refresh_from_db()
    assert job.state == JobState.HARD_ERROR
    told = [m for m in mailoutbox if m.to == ["admins@example.org"]]
    assert len(told) == 1
    assert "gave up after 2 attempts" in told[0].body


def test_a_burst_of_sites_reloads_nginx_far_fewer_times(alice, node, testhost):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def reloads() -> int:
        text = testhost.run(
            ["sh", "-c", "cat /var/lib/panel-agent/reload.count 2>/dev/null || echo 0"]
        )
        return int(text.strip() or 0)

    sites = [services.site_create(member=alice, domain=f"burst{n}.example.org") for n in range(8)]
    before = reloads()

    def run(site_id: int) -> str:
        job = Job.objects.get(site_id=site_id)
        try:
            return job_run(job_id=job.pk).state
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(run, [s.pk for s in sites]))
    assert states == [JobState.OK] * 8
    assert all(testhost.http(s.domain)[0] == 200 for s in sites)
    assert reloads() - before <= 4, "eight sites at once must not mean eight reloads"
