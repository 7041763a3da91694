"""Domain claims with proof.

bob created www.alice.localhost under alice's site: a member cannot claim a name under, or
above, a name another member holds. A name goes live (and gets a certificate) only once its
DNS points at the co-op's node or a TXT record ``_commune-panel.NAME`` carries its token,
checked against a real DNS server on loopback. Reserved names (the demo's NAME.localhost)
need no proof: no one can own them. Admins can confirm a name without proof, with a reason.
"""

from __future__ import annotations

import socket
import ssl
import urllib.request

import pytest
from django.urls import reverse

from panel.models import AuditEntry
from provisioning import services
from provisioning.models import Job, JobState, Node, ProofMethod, Site, SiteState
from tests.hosts.fixtures import run_jobs
from tests.provisioning.dns import HostingZone

pytestmark = pytest.mark.django_db(transaction=True)

NODE_IPV4 = "198.51.100.7"  # documentation range: only ever a DNS answer, never dialled


@pytest.fixture
def pointed_node(node: Node, settings) -> Node:
    Node.objects.filter(pk=node.pk).update(public_ipv4=NODE_IPV4)
    settings.HOSTING_CNAME_TARGET = "sites.coop-hosting.net"
    node.refresh_from_db()
    return node


def test_a_name_under_or_above_another_members_name_is_refused(alice, bob, node, client):
    services.site_create(member=alice, domain="alice.localhost")
    services.site_create(member=alice, domain="shop.choir.localhost")
    with pytest.raises(services.HostingError, match=r"under alice\.localhost"):
        services.site_create(member=bob, domain="www.alice.localhost")
    bobs = services.site_create(member=bob, domain="bob.localhost")
    with pytest.raises(services.HostingError, match=r"under alice\.localhost"):
        services.site_alias_add(site=bobs, domain="deep.www.alice.localhost", actor=bob)
    with pytest.raises(services.HostingError, match=r"has shop\.choir\.localhost under it"):
        services.site_create(member=bob, domain="choir.localhost")
    # In the browser: the reason next to the field, nothing saved.
    client.force_login(bob)
    page = client.post(
        reverse("provisioning:index"), {"domain": "www.alice.localhost", "kind": "static"}
    ).content.decode()
    assert "under alice.localhost, which another member holds" in page
    assert 'aria-invalid="true"' in page
    assert not Site.objects.filter(domain="www.alice.localhost").exists()
    # Alice's own names under her own domain are hers to add.
    mine = Site.objects.get(domain="alice.localhost")
    alias = services.site_alias_add(site=mine, domain="www.alice.localhost", actor=alice)
    assert alias.verified


def test_a_new_domain_waits_for_dns_then_goes_live_with_a_certificate(
    alice, pointed_node, testhost, hosting_dns: HostingZone, client, settings
):
    settings.ACME_DIRECTORY_URL = testhost.acme_directory
    site = services.site_create(member=alice, domain="choir-alice.org")
    assert not site.verified
    assert not Job.objects.filter(site=site).exists(), "nothing reaches the node unproved"
    assert testhost.http("choir-alice.org")[0] == 404

    # The page says what to publish, and the check finds nothing yet.
    client.force_login(alice)
    url = reverse("provisioning:site", args=[site.pk])
    page = client.get(url).content.decode()
    assert "Waiting for DNS proof" in page
    assert f"choir-alice.org. A {NODE_IPV4}" in page
    assert f'_commune-panel.choir-alice.org. TXT "{site.proof_token}"' in page
    assert "choir-alice.org. CNAME sites.coop-hosting.net." in page
    assert services.domain_check(site=site, actor=alice) == [
        ("choir-alice.org", False, "A: -; AAAA: -; CNAME: -; TXT: -")
    ]
    # Pointing somewhere else proves nothing.
    hosting_dns.set_record("choir-alice.org", "A", "203.0.113.9")
    client.post(reverse("provisioning:site_action", args=[site.pk, "check"]))
    site.refresh_from_db()
    assert not site.verified
    assert "203.0.113.9" in site.check_note
    assert "203.0.113.9" in client.get(url).content.decode()

    # Pointed at the node: "check now" proves it, the site is set up, then certified.
    hosting_dns.set_record("choir-alice.org", "A", NODE_IPV4)
    response = client.post(reverse("provisioning:site_action", args=[site.pk, "check"]))
    assert response.status_code == 302
    site.refresh_from_db()
    assert site.verified_how == ProofMethod.DNS
    jobs = run_jobs(site)
    assert [j.verb for j in jobs] == ["site.ensure", "cert.ensure", "site.ensure"]
    assert all(j.state == JobState.OK for j in jobs), [j.error for j in jobs]
    site.refresh_from_db()
    assert site.state == SiteState.ACTIVE
    assert site.tls
    assert testhost.http("choir-alice.org")[0] == 200
    assert "certificate" in served_certificate_names(testhost, "choir-alice.org")
    assert AuditEntry.objects.filter(action="site.domain_verified", actor=alice).count() == 1
    assert "Waiting for DNS proof" not in client.get(url).content.decode()


def served_certificate_names(testhost, name: str) -> str:
    """The TLS handshake for ``name``, verified against Pebble's root: "certificate" when it
    verifies for that name."""
    insecure = ssl.create_default_context(cafile=str(testhost.ca_path))
    root = (
        urllib.request.urlopen(
            f"https://127.0.0.1:{testhost.pebble_mgmt_port}/roots/0", context=insecure, timeout=5
        )
        .read()
        .decode()
    )
    context = ssl.create_default_context(cadata=root)
    raw = socket.create_connection(("127.0.0.1", testhost.https_port), timeout=5)
    with context.wrap_socket(raw, server_hostname=name) as tls:
        return "certificate" if tls.getpeercert() else ""


def test_a_txt_token_or_a_cname_proves_a_name_and_the_beat_job_finds_them(
    alice, bob, pointed_node, testhost, hosting_dns: HostingZone
):
    site = services.site_create(member=alice, domain="garden-alice.org")
    alias = services.site_alias_add(site=site, domain="www.garden-alice.net", actor=alice)
    # bob's claim of the same name does not keep alice from it: claims alone hold nothing.
    bobs = services.site_create(member=bob, domain="garden-alice.org")
    assert services.domains_check_pending() == 0

    hosting_dns.set_txt(f"_commune-panel.{site.domain}", site.proof_token)
    hosting_dns.set_record("www.garden-alice.net", "CNAME", "node1.sites.coop-hosting.net.")
    assert services.domains_check_pending() == 2
    site.refresh_from_db()
    alias.refresh_from_db()
    assert site.verified_how == ProofMethod.TXT
    assert alias.verified_how == ProofMethod.DNS
    jobs = run_jobs(site)
    # No certificate: a TXT proof says nothing of where the name points (HTTP-01).
    assert {j.verb for j in jobs} == {"site.ensure"}
    assert all(j.state == JobState.OK for j in jobs), [j.error for j in jobs]
    assert jobs[-1].spec["domains"] == ["garden-alice.org", "www.garden-alice.net"]
    assert testhost.http("garden-alice.org")[0] == 200
    assert testhost.http("www.garden-alice.net")[0] == 200

    # bob's token is not alice's, and the name is hers now.
    results = services.domain_check(site=bobs, actor=bob)
    assert results[0][:2] == ("garden-alice.org", False)
    bobs.refresh_from_db()
    assert not bobs.verified
    assert not Job.objects.filter(site=bobs).exists()


def test_an_admin_confirms_a_name_without_proof_with_a_reason(alice, bob, carol, node, client):
    site = services.site_create(member=alice, domain="hand-checked.org")
    with pytest.raises(services.HostingError, match="Only admins"):
        services.domain_confirm(site=site, alias=None, actor=bob, reason="trust me")
    client.force_login(carol)
    confirm = reverse("admin:provisioning_site_confirm_name", args=[site.pk])
    page = client.get(confirm).content.decode()
    assert "<code>hand-checked.org</code>" in page
    client.post(confirm, {"reason": "  "})
    site.refresh_from_db()
    assert not site.verified
    client.post(confirm, {"reason": "registrar's letter seen, ticket 42"})
    site.refresh_from_db()
    assert site.verified_how == ProofMethod.ADMIN
    entry = AuditEntry.objects.get(action="site.domain_verified")
    assert entry.actor == carol
    assert entry.note == "registrar's letter seen, ticket 42"
    assert Job.objects.filter(site=site, verb="site.ensure").count() == 1
    assert "<code>hand-checked.org</code>" not in client.get(confirm).content.decode()
    # The admins' list finds the names that wait.
    services.site_create(member=bob, domain="still-waiting.org")
    waiting = client.get(reverse("admin:provisioning_site_changelist") + "?proof=waiting")
    assert "still-waiting.org" in waiting.content.decode()
    assert "hand-checked.org" not in waiting.content.decode()
    # Members do not reach the page.
    client.force_login(alice)
    assert client.get(confirm).status_code == 302
    client.post(confirm, {"reason": "mine"})
    assert AuditEntry.objects.filter(action="site.domain_verified").count() == 1


def test_the_demos_localhost_sites_need_no_proof(alice, held_jobs, settings, tmp_path):
    from provisioning.management.commands.hosting_demo import seed_hosting

    settings.STATE_DIR = tmp_path
    seed_hosting(alice)
    site = Site.objects.get(member=alice)
    assert site.domain == "alice.localhost"
    assert site.verified_how == ProofMethod.RESERVED
    assert Job.objects.filter(site=site, verb="site.ensure").count() == 1
