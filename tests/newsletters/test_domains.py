"""Sending domains: the key, the records to publish, and the check against a real DNS server."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from newsletters import dkim, services
from newsletters.models import SendingDomain
from panel.models import AuditEntry, User
from tests.newsletters.dnsserver import ZoneServer
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


def test_the_relays_own_domain_and_someone_elses_verified_one_are_refused(alice, bob, dns_zone):
    with pytest.raises(services.NewsletterError, match="relay"):
        services.domain_add(member=alice, name="mail.bounces.localhost")
    bobs = services.domain_add(member=bob, name="bob.example")
    publish(dns_zone, bobs)
    assert services.domain_check(domain=bobs, actor=bob).verified
    with pytest.raises(services.NewsletterError, match="verified by another member"):
        services.domain_add(member=alice, name="BOB.example")
    with pytest.raises(services.NewsletterError, match="already added"):
        services.domain_add(member=bob, name="bob.example")


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


# Claims need proof (issue 14, item 10) --------------------------------------------------


def _verify(zone: ZoneServer, domain: SendingDomain, actor: User) -> SendingDomain:
    publish(zone, domain)
    return services.domain_check(domain=domain, actor=actor)


def test_a_claim_without_proof_blocks_no_one(alice, bob, dave):
    """Anyone could add gmail.com and so lock its real owner out; a pending claim holds nothing."""
    squatted = services.domain_add(member=bob, name="gmail.com")
    assert not squatted.verified
    owners = services.domain_add(member=alice, name="gmail.com")
    assert SendingDomain.objects.filter(name="gmail.com").count() == 2
    assert owners.pk != squatted.pk
    # Subdomains of a pending claim are free too.
    services.domain_add(member=alice, name="news.gmail.com")


def test_the_first_verified_claim_wins_and_the_other_claimants_are_told(
    alice, bob, dns_zone, mailoutbox, django_capture_on_commit_callbacks
):
    bobs = services.domain_add(member=bob, name="shared.example")
    bobs_sub = services.domain_add(member=bob, name="news.shared.example")
    alices = services.domain_add(member=alice, name="shared.example")
    with django_capture_on_commit_callbacks(execute=True):
        assert _verify(dns_zone, alices, alice).verified
    # Bob's two claims can no longer be verified, and he is told so, once per claim.
    told = [m for m in mailoutbox if m.to == ["bob@example.org"]]
    assert sorted(m.subject for m in told) == sorted(
        [
            "[Commune panel] news.shared.example is verified by another member",
            "[Commune panel] shared.example is verified by another member",
        ]
    ), [m.subject for m in told]
    assert all("admins" in m.body for m in told)
    assert not [m for m in mailoutbox if m.to == ["alice@example.org"]]
    # Even with a record of his own published (it replaces alice's), bob's check cannot take it
    # while alice's is proven... and alice's proof is gone now: the DNS is the truth.
    dns_zone.set_txt(bobs.dkim_name, dkim.dns_record_value(bobs.dkim_public_key))
    with django_capture_on_commit_callbacks(execute=True):
        checked = services.domain_check(domain=bobs, actor=bob)
    assert checked.verified
    assert not SendingDomain.objects.get(pk=alices.pk).verified
    assert [m.subject for m in mailoutbox if m.to == ["alice@example.org"]] == [
        "[Commune panel] shared.example is verified by another member"
    ]
    assert AuditEntry.objects.filter(
        action="newsletters.domain_unverified", object_id=str(alices.pk)
    ).exists()
    # Bob's subdomain claim is under his own verified domain now: it may be verified.
    assert _verify(dns_zone, bobs_sub, bob).verified


def test_a_proven_holder_keeps_the_domain_against_a_later_proof(alice, bob, dns_zone):
    """Two claims share one DKIM name only when they share the selector; with their own
    selectors both can publish, and the first verified one holds the name."""
    bobs = services.domain_add(member=bob, name="held.example")
    alices = _verify(dns_zone, services.domain_add(member=alice, name="held.example"), alice)
    assert alices.verified
    SendingDomain.objects.filter(pk=bobs.pk).update(dkim_selector="other202612")
    bobs.refresh_from_db()
    checked = _verify(dns_zone, bobs, bob)
    assert not checked.verified
    assert checked.check_result["held_by_another_member"] is True
    assert SendingDomain.objects.get(pk=alices.pk).verified


def test_a_verified_domain_and_its_subdomains_are_refused_to_other_members(
    alice, bob, alice_domain
):
    for name in ("alice-news.example", "mail.alice-news.example", "a.b.alice-news.example"):
        with pytest.raises(services.NewsletterError, match="verified by another member"):
            services.domain_add(member=bob, name=name)
    assert not SendingDomain.objects.filter(member=bob).exists()
    # Its owner may add subdomains; a look-alike is another name.
    services.domain_add(member=alice, name="mail.alice-news.example")
    services.domain_add(member=bob, name="alice-news.example.org")


def test_the_database_holds_one_verified_claim_per_name(alice, bob, alice_domain):
    claim = SendingDomain.objects.create(
        member=bob,
        name="alice-news.example",
        dkim_selector="x",
        dkim_private_key="-",
        dkim_public_key="-",
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        SendingDomain.objects.filter(pk=claim.pk).update(verified_at=alice_domain.verified_at)


def test_admins_override_with_a_reason_and_it_is_audited(
    client, alice, bob, carol, dns_zone, mailoutbox, django_capture_on_commit_callbacks
):
    """The real owner of a domain someone else proved (a lapsed registration bought back,
    a record set by a former employee) asks the admins; they decide, saying why."""
    alices = services.domain_add(member=alice, name="disputed.example")
    bobs = _verify(dns_zone, services.domain_add(member=bob, name="disputed.example"), bob)
    with pytest.raises(services.NewsletterError, match="reason"):
        services.domain_override(domain=alices, actor=carol, reason="  ")
    with pytest.raises(services.NewsletterError, match="admins"):
        services.domain_override(domain=alices, actor=bob, reason="mine")
    client.force_login(carol)
    url = reverse("newsletters:staff_domain_override", args=[alices.pk])
    page = client.post(url, {"reason": ""})
    assert page.status_code == 422
    assert "reason" in page.content.decode().lower()
    assert not SendingDomain.objects.get(pk=alices.pk).verified
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(url, {"reason": "Registrar's transfer papers, ticket 4411"})
    assert page.status_code == 302
    assert SendingDomain.objects.get(pk=alices.pk).verified
    assert not SendingDomain.objects.get(pk=bobs.pk).verified
    entry = AuditEntry.objects.get(action="newsletters.domain_overridden")
    assert (entry.actor, entry.owner, entry.note) == (
        carol,
        alice,
        "Registrar's transfer papers, ticket 4411",
    )
    assert entry.actor_is_admin
    assert AuditEntry.objects.filter(
        action="newsletters.domain_unverified", object_id=str(bobs.pk)
    ).exists()
    assert [m.subject for m in mailoutbox if m.to == ["bob@example.org"]] == [
        "[Commune panel] disputed.example is verified by another member"
    ]
    # The admins' decision stands against bob's next check, his record still published.
    assert not services.domain_check(domain=bobs, actor=bob).verified
    assert SendingDomain.objects.get(pk=alices.pk).verified
    # Members cannot reach the override.
    client.force_login(bob)
    assert client.post(url, {"reason": "mine"}).status_code == 403


def test_the_domain_page_says_whose_it_is(client, alice, bob, alice_domain):
    bobs = services.domain_add(member=bob, name="pending.example")
    services.domain_add(member=alice, name="pending.example")
    other = SendingDomain.objects.create(
        member=bob,
        name="alice-news.example",
        dkim_selector="x",
        dkim_private_key="-",
        dkim_public_key="-",
    )
    client.force_login(bob)
    page = client.get(reverse("newsletters:domain", args=[bobs.pk])).content.decode()
    assert "not verified" in page
    page = client.get(reverse("newsletters:domain", args=[other.pk])).content.decode()
    assert "verified by another member" in page
