"""Disk quotas enforced on the node, with btrfs quota groups.

This kernel has no ext4/XFS quota formats, but btrfs qgroups work: the test gives the test
host's /srv/sites a btrfs of its own (a loop-mounted image, made and removed here), the agent
makes each site a subvolume with a qgroup limit, and a site filled past its quota gets write
errors while another site goes on writing. The member sees usage against quota on the site
page and is emailed once per crossing of 90 %; metering goes on as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.urls import reverse

from panel.models import AuditEntry, UsageEvent
from provisioning import services
from provisioning.models import JobState, Site
from tests.hosts.fixtures import run_jobs
from tests.hosts.testhost import TestHost
from tests.provisioning.test_acme import as_user

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024


@pytest.fixture
def btrfs_sites(testhost: TestHost) -> Iterator[str]:
    """/srv/sites on a 300 MiB btrfs with quotas on, for this test only.

    Mounted over the sites of earlier tests (hidden meanwhile, back afterwards); the loop
    device and the image go when the test ends.
    """
    image = "/var/lib/sites-btrfs.img"  # inside the test host
    testhost.run(["truncate", "-s", "300M", image])
    testhost.run(["mkfs.btrfs", "-q", image])
    loop = testhost.run(["losetup", "--find", "--show", image]).strip()
    try:
        testhost.run(["mount", "-t", "btrfs", loop, "/srv/sites"])
        testhost.run(["btrfs", "quota", "enable", "/srv/sites"])
        yield loop
    finally:
        # Lazily, if something still holds it (a PHP worker's directory); it goes all the same.
        testhost.run(["sh", "-c", "umount /srv/sites || umount -l /srv/sites; true"])
        testhost.run(["losetup", "-d", loop], check=False)
        testhost.run(["rm", "-f", image])


def fill(host: TestHost, site: Site, name: str, mib: int) -> tuple[str, int]:
    """Write ``mib`` MiB into the site's files as its user: dd's complaint and the size."""
    path = f"/srv/sites/{site.system_user}/htdocs/{name}"
    out = as_user(
        host,
        site.system_user,
        f"dd if=/dev/zero of={path} bs=1M count={mib} conv=fsync 2>&1 || true",
    )
    size = int(host.run(["stat", "-c", "%s", path]).strip() or 0)
    return out, size


def test_a_site_cannot_write_past_its_quota_and_its_member_is_told(
    alice, bob, carol, node, testhost, btrfs_sites, hosting_rates, mailoutbox, client
):
    full = services.site_create(member=alice, domain="full.example.org")
    roomy = services.site_create(member=bob, domain="roomy.example.org")
    with pytest.raises(services.HostingError, match="Only admins"):
        services.site_set_quota(site=full, quota_mb=5000, actor=alice)
    services.site_set_quota(site=full, quota_mb=20, actor=carol)
    full.refresh_from_db()
    for site in (full, roomy):
        jobs = [j for j in run_jobs(site) if j.site_id == site.pk]
        assert all(j.state == JobState.OK for j in jobs), [j.error for j in jobs]
        assert jobs[-1].result["quota"]["enforced"] is True, jobs[-1].result
    assert testhost.http("full.example.org")[0] == 200

    # Past its quota, the site's writes fail; the other site's go on.
    complaint, size = fill(testhost, full, "big.bin", 40)
    assert "Disk quota exceeded" in complaint, complaint
    assert size <= 20 * MIB
    complaint, size = fill(testhost, roomy, "big.bin", 40)
    assert "quota" not in complaint, complaint
    assert size == 40 * MIB

    # The hourly metering reads usage.report: usage against quota, one email at 90 %. (The
    # site has been on disk for ten hours, so its GB-months are more than a rounding error.)
    Site.objects.filter(pk=full.pk).update(created_at=full.created_at - timedelta(hours=10))
    services.collect_usage(node=node)
    full.refresh_from_db()
    assert full.disk_bytes >= 18 * MIB
    assert full.quota_percent >= 90
    assert full.quota_warned_at is not None

    def warnings_to(member) -> list:
        return [m for m in mailoutbox if m.to == [member.email] and "disk space" in m.subject]

    told = warnings_to(alice)
    assert len(told) == 1
    assert "full.example.org" in told[0].subject
    assert f"{full.quota_percent} %" in told[0].body
    assert not warnings_to(bob), "bob's site is far from full"
    assert UsageEvent.objects.filter(member=alice, kind="disk").exists(), "metering goes on"
    services.collect_usage(node=node)
    assert len(warnings_to(alice)) == 1, "once per crossing"

    client.force_login(alice)
    page = client.get(reverse("provisioning:site", args=[full.pk])).content.decode()
    assert f"of 20.0\xa0MB ({full.quota_percent} %)" in page
    assert "<meter" in page

    # Below again, then over again: a second crossing, a second email.
    testhost.run(["rm", f"/srv/sites/{full.system_user}/htdocs/big.bin"])
    testhost.run(["btrfs", "filesystem", "sync", "/srv/sites"])
    services.collect_usage(node=node)
    full.refresh_from_db()
    assert full.quota_warned_at is None
    fill(testhost, full, "again.bin", 19)
    services.collect_usage(node=node)
    assert len(warnings_to(alice)) == 2
    assert AuditEntry.objects.filter(action="site.quota_warned").count() == 2

    # The site's subvolume goes with the site.
    services.site_delete(site=full, actor=alice)
    run_jobs(full)
    Site.objects.filter(pk=full.pk).update(purge_after=full.created_at)
    services.purge_due_sites()
    run_jobs(full)
    assert not testhost.exists(f"/srv/sites/{full.system_user}")
