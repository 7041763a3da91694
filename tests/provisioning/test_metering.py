from __future__ import annotations

from datetime import timedelta

import pytest

from panel.models import UsageEvent
from provisioning import services
from provisioning.models import Site
from tests.hosts.fixtures import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def test_disk_and_transfer_are_recorded_at_the_nodes_cost_once(
    alice, node, testhost, hosting_rates
):
    site = services.site_create(member=alice, domain="metered.example.org")
    run_jobs(site)
    testhost.run(
        ["sh", "-c", f"head -c 3000000 /dev/zero > /srv/sites/{site.system_user}/htdocs/big.bin"]
    )
    for _ in range(3):
        assert testhost.http("metered.example.org", "/big.bin")[0] == 200
    # Pretend the site has been on disk for ten hours.
    Site.objects.filter(pk=site.pk).update(created_at=site.created_at - timedelta(hours=10))
    assert services.collect_usage(node=node) == 2
    disk = UsageEvent.objects.get(member=alice, kind="disk")
    transfer = UsageEvent.objects.get(member=alice, kind="transfer")
    assert disk.unit == "GB-month"
    assert "price list" in disk.cost_source
    assert 0.00003 < float(disk.quantity) < 0.00006  # ~3 MB for 10 of 720 hours
    assert transfer.quantity >= 9000000 / 10**9  # three downloads of 3 MB
    # Nothing new on the node: nothing new on the bill.
    services.collect_usage(node=node)
    assert UsageEvent.objects.filter(member=alice, kind="transfer").count() == 1
    assert UsageEvent.objects.filter(member=alice, kind="disk").count() <= 2
