"""Creating sites from the browser's point of view: validation, ownership, pages."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from provisioning import services
from provisioning.models import Site
from provisioning.validation import clean_domain, clean_public_key


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("../etc/passwd", "is not a domain name"),
        ("example.org;reboot", "is not a domain name"),
        ('example.org"', "is not a domain name"),
        ("example.org\nserver_name evil", "no spaces or control characters"),
        ("a" * 64 + ".org", "at most 63"),
        ("x." * 130 + "org", "at most 253"),
        (
            "\u0440\u0430\u0443\u0440\u0430.com",
            "look like Latin",
        ),  # all Cyrillic, looks like "paypa"
        ("p\u0430ypal.com", "mixes alphabets"),  # one Cyrillic a among Latin letters
        ("localhost", "at least two parts"),
        ("10.0.0.1", "not an address"),
        ("-bad-.example.org", "not a valid part"),
    ],
)
def test_bad_domains_are_refused_with_a_reason(raw, message):
    with pytest.raises(ValidationError, match=message):
        clean_domain(raw)


def test_good_domains_are_normalised():
    assert clean_domain(" Example.ORG. ") == "example.org"
    assert clean_domain("bücher.example") == "xn--bcher-kva.example"
    assert clean_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"


def test_public_keys_are_one_plain_key_line():
    good = (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKHY72knJqwUB6UqRBlg0yk36lFXrzY6fdrYYCyKtJQ me@laptop"
    )
    line, fingerprint = clean_public_key(good)
    assert line == good
    assert fingerprint.startswith("SHA256:")
    for bad in [
        'command="sh" ' + good,
        good + "\nssh-ed25519 AAAA",
        "ssh-ed25519 not-base64!",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBKHY72knJqwUB6UqRBlg0yk36lFXrzY6fdrYYCyKtJQ",
    ]:
        with pytest.raises(ValidationError):
            clean_public_key(bad)


def test_a_domain_another_member_has_is_refused(alice, bob, node):
    services.site_create(member=alice, domain="taken.example.org")
    with pytest.raises(services.HostingError, match="already used by another site"):
        services.site_create(member=bob, domain="TAKEN.example.org")
    with pytest.raises(services.HostingError, match="already used by another site"):
        services.site_alias_add(
            site=services.site_create(member=bob, domain="bob.example.org"),
            domain="taken.example.org",
            actor=bob,
        )


def test_only_members_order_sites(dave, node):
    with pytest.raises(services.HostingError, match="Only members"):
        services.site_create(member=dave, domain="dave.example.org")


def test_form_shows_the_reason_next_to_the_field(client, alice, node):
    client.force_login(alice)
    response = client.post(
        reverse("provisioning:index"), {"domain": "bad;name.org", "kind": "static"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'aria-invalid="true"' in page
    assert "is not a domain name" in page
    assert not Site.objects.exists()


def test_another_members_site_and_jobs_are_404(client, alice, bob, node):
    site = services.site_create(member=alice, domain="mine.example.org")
    job = site.jobs.get()
    client.force_login(bob)
    for url in [
        reverse("provisioning:site", args=[site.pk]),
        reverse("provisioning:site_jobs", args=[site.pk]),
    ]:
        assert client.get(url).status_code == 404, url
    for url in [
        reverse("provisioning:site_action", args=[site.pk, "suspend"]),
        reverse("provisioning:site_action", args=[site.pk, "delete"]),
        reverse("provisioning:alias_add", args=[site.pk]),
        reverse("provisioning:database_add", args=[site.pk]),
        reverse("provisioning:job_retry", args=[job.pk]),
    ]:
        assert (
            client.post(url, {"domain": "x.example.org", "engine": "mariadb"}).status_code == 404
        ), url
    site.refresh_from_db()
    assert site.state == "pending"
    client.force_login(alice)
    page = client.get(reverse("provisioning:site", args=[site.pk])).content.decode()
    assert "mine.example.org" in page
    assert "site.ensure" in page


def test_database_password_is_shown_once_and_not_kept(client, alice, node):
    site = services.site_create(member=alice, domain="db.example.org")
    client.force_login(alice)
    page = client.post(
        reverse("provisioning:database_add", args=[site.pk]), {"engine": "mariadb"}
    ).content.decode()
    database = site.databases.get()
    assert database.name in page
    import re

    password = re.search(
        r"<code>" + database.db_user + r"</code> / <code>([^<]+)</code>", page
    ).group(1)  # type: ignore[union-attr]
    assert len(password) >= 24
    later = client.get(reverse("provisioning:site", args=[site.pk])).content.decode()
    assert password not in later


# Look-alikes, by the Unicode confusables data (UTS #39) rather than a hand list.


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("\u0261oogle.com", "\u0261"),  # LATIN SMALL LETTER SCRIPT G, a Latin letter itself
        ("\uff47\uff4f\uff4f\uff47\uff4c\uff45.com", "\uff47"),  # fullwidth letters
        ("google.\uff43\uff4f\uff4d", "\uff43"),  # a fullwidth top-level domain
        ("\u0131sparta.com", "\u0131"),  # dotless i
        ("g\u043e\u043egle.com", "mixes alphabets"),  # two Cyrillic o among Latin letters
        ("\u03b1pple.com", "mixes alphabets"),  # Greek alpha
        ("\u0455\u0441\u043e\u0440\u0435.com", "look like Latin"),  # all Cyrillic: "scope"
        ("xn--oogle-qmc.com", "\u0261"),  # the first one, typed as punycode
        ("caf\u00e9\u2603.example", "\u2603"),  # a snowman is no letter
    ],
)
def test_look_alikes_are_refused_by_the_unicode_confusables(raw, message):
    with pytest.raises(ValidationError, match=message):
        clean_domain(raw)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("bu\u0308cher.example", "xn--bcher-kva.example"),  # decomposed, as some keyboards type it
        ("stra\u00dfe.example", "xn--strae-oqa.example"),
        ("\u043c\u043e\u0441\u043a\u0432\u0430.example", "xn--80adxhks.example"),
        ("\u65e5\u672c\u8a9e\u304b\u306a.example", "xn--u8j2c547sncbk91h.example"),
        ("\u03b5\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac.example", "xn--hxargifdar.example"),
    ],
)
def test_real_names_in_other_scripts_are_welcome(raw, name):
    assert clean_domain(raw) == name


def test_the_look_alike_error_stands_next_to_the_field(client, alice, node):
    client.force_login(alice)
    response = client.post(
        reverse("provisioning:index"), {"domain": "\u0261oogle.com", "kind": "static"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    field = page[page.index('name="domain"') - 400 : page.index('name="domain"') + 1200]
    assert 'aria-invalid="true"' in field
    assert "looks like g" in field
    assert not Site.objects.exists()
