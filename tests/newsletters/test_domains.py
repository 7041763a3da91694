"""Sending domains: the key, the records to publish, and the check against a real DNS server."""

from __future__ import annotations

import pytest
from django.urls import reverse

from newsletters import dkim, services
from newsletters.models import SendingDomain
from panel.models import AuditEntry
from tests.newsletters.fixtures import publish

pytestmark = pytest.mark.django_db


def test_adding_a_domain_makes_a_dkim_key_and_the_records_to_publish(client, alice):
    client.force_login(alice)
    response = client.post(reverse("newsletters:domain_add"), {"name": "Alice-News.Example."})
    domain = SendingDomain.objects.get(member=alice)
    assert response.status_code == 302
    assert domain.name == "alice-news.example"
    assert not domain.verified
    assert domain.dkim_private_key.startswith("-----BEGIN")
    page = client.get(reverse("newsletters:domain", args=[domain.pk])).content.decode()
    assert domain.dkim_name in page
    assert dkim.dns_record_value(domain.dkim_public_key) in page
    assert "include:_spf.bounces.localhost" in page
    assert f"_dmarc.{domain.name}" in page
    assert "BEGIN" not in page  # the private key never leaves the panel
    assert AuditEntry.objects.filter(action="newsletters.domain_added", owner=alice).exists()


@pytest.mark.parametrize(
    "name", ["not a domain", "localhost", "-bad.example", "a..b.example", "x" * 64 + ".org"]
)
def test_invalid_domain_names_are_refused(alice, name):
    with pytest.raises(services.NewsletterError, match="not a valid domain"):
        services.domain_add(member=alice, name=name)


def test_the_relays_own_domain_and_someone_elses_are_refused(alice, bob):
    with pytest.raises(services.NewsletterError, match="relay"):
        services.domain_add(member=alice, name="mail.bounces.localhost")
    services.domain_add(member=bob, name="bob.example")
    with pytest.raises(services.NewsletterError, match="already registered"):
        services.domain_add(member=alice, name="BOB.example")


def test_only_a_published_matching_dkim_key_verifies(alice, dns_zone):
    domain = services.domain_add(member=alice, name="alice-news.example")
    # Nothing published yet.
    assert not services.domain_check(domain=domain, actor=alice).verified
    # SPF alone authorises the relay but cannot align (bounces go to the co-op's domain).
    dns_zone.set_txt(domain.name, "v=spf1 include:_spf.bounces.localhost ~all")
    checked = services.domain_check(domain=domain, actor=alice)
    assert not checked.verified
    assert checked.check_result["spf"] == {
        "ok": True,
        "aligned": False,
        "found": ["v=spf1 include:_spf.bounces.localhost ~all"],
    }
    # Someone else's key at our selector.
    dns_zone.set_txt(domain.dkim_name, dkim.dns_record_value(dkim.generate_key().public_b64))
    assert not services.domain_check(domain=domain, actor=alice).verified
    # Ours.
    publish(dns_zone, domain)
    dns_zone.set_txt(f"_dmarc.{domain.name}", "v=DMARC1; p=none")
    checked = services.domain_check(domain=domain, actor=alice)
    assert checked.verified
    assert checked.check_result["dkim"]["ok"]
    assert checked.check_result["dmarc"]["ok"]
    assert (domain.dkim_name, "TXT") in dns_zone.queries
    # Removed from DNS: the domain stops being verified.
    dns_zone.remove(domain.dkim_name)
    assert not services.domain_check(domain=domain, actor=alice).verified


def test_a_dns_failure_says_try_again_and_changes_nothing(alice, dns_zone):
    domain = services.domain_add(member=alice, name="alice-news.example")
    publish(dns_zone, domain)
    services.domain_check(domain=domain, actor=alice)
    dns_zone.fail(domain.dkim_name)
    with pytest.raises(services.NewsletterError, match="Try again"):
        services.domain_check(domain=domain, actor=alice)
    assert SendingDomain.objects.get(pk=domain.pk).verified


def test_the_check_button_reports_the_result(client, alice, dns_zone):
    domain = services.domain_add(member=alice, name="alice-news.example")
    client.force_login(alice)
    page = client.post(reverse("newsletters:domain_check", args=[domain.pk]), follow=True)
    assert "not verified yet" in page.content.decode()
    publish(dns_zone, domain)
    page = client.post(reverse("newsletters:domain_check", args=[domain.pk]), follow=True)
    assert "is verified" in page.content.decode()
    assert AuditEntry.objects.filter(action="newsletters.domain_checked").count() == 2


def test_a_domain_in_use_cannot_be_removed(alice, alice_list, alice_domain):
    with pytest.raises(services.NewsletterError, match="Lists still send"):
        services.domain_remove(domain=alice_domain, actor=alice)
