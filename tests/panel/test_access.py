"""Every member-facing URL: login required, membership where it orders services, and another
member's object is a 404.

The walk covers every URL the project defines; a new URL that is not classified here fails
the test, so that nobody adds a page and forgets to decide who may see it.
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from panel.models import Application
from tests.conftest import pending_application

PUBLIC = {
    "home",
    "healthz",
    "set_language",
    # A newsletter's public pages: signup, its archive, the links in its mail.
    "newsletters:signup",
    "newsletters:archive",
    "newsletters:archive_item",
    "newsletters:archive_item_page",
    "newsletters:confirm",
    "newsletters:unsubscribe",
}
# URL names that order or manage services: members in good standing only.
MEMBERS_ONLY = {
    "provisioning:index",
    "newsletters:index",
    "telephony:index",
    "provisioning:keys",
    "telephony:phone_add",
    "telephony:pin",
    "telephony:pin_unlock",
    "telephony:plan",
    "newsletters:domain_add",
    "newsletters:list_new",
}
# Member pages about one object of theirs (another member's is a 404: tests/provisioning).
MEMBERS_OBJECTS = {
    "provisioning:site",
    "provisioning:site_jobs",
    "provisioning:alias_add",
    "provisioning:alias_remove",
    "provisioning:database_add",
    "provisioning:site_action",
    "provisioning:job_retry",
    "provisioning:key_remove",
    "telephony:phone_remove",
    "newsletters:domain",
    "newsletters:domain_check",
    "newsletters:domain_remove",
    "newsletters:list",
    "newsletters:list_edit",
    "newsletters:list_import",
    "newsletters:list_export",
    "newsletters:campaign_new",
    "newsletters:subscriber",
    "newsletters:subscriber_remove",
    "newsletters:import",
    "newsletters:campaign",
    "newsletters:campaign_progress",
    "newsletters:campaign_preview",
    "newsletters:campaign_schedule",
    "newsletters:campaign_test",
    "newsletters:campaign_action",
}
# The commune's books: members in good standing and the staff who keep the books
# (tests/panel/ledger/test_commune_access.py).
BOOKS = {"commune"}
STAFF_ONLY = {
    "staff_applications",
    "staff_application_decide",
    "staff_status",
    "staff_billing",
    "staff_payments",
    "staff_bank_upload",
    "staff_bank_import",
    "staff_invoices",
    "staff_invoice_paid",
    "staff_close",
    "staff_close_progress",
    "staff_trial_balance",
    "provisioning:staff_failed_jobs",
    "telephony:staff_decks",
    "telephony:staff_deck_retry",
    "telephony:staff_deck_mapping",
    "telephony:staff_live",
    "newsletters:staff_outbox",
    "newsletters:staff_domains",
    "newsletters:staff_domain_override",
    "provisioning:staff_nodes",
    "provisioning:staff_node",
    "provisioning:staff_node_enroll",
}
# Arguments for URLs that take some; access is decided before the object is looked up.
ARGS: dict[str, list[object]] = {
    "statement": ["2026-10"],
    "statement_csv": ["2026-10"],
    "staff_bank_import": [1],
    "staff_invoice_paid": [1],
    "staff_close": [1],
    "staff_close_progress": [1],
    "provisioning:site": [1],
    "provisioning:site_jobs": [1],
    "provisioning:alias_add": [1],
    "provisioning:alias_remove": [1, 1],
    "provisioning:database_add": [1],
    "provisioning:site_action": [1, "suspend"],
    "provisioning:job_retry": [1],
    "provisioning:key_remove": [1],
    "telephony:phone_remove": [1],
    "telephony:staff_deck_retry": [1],
    "telephony:staff_deck_mapping": [1],
    **{
        f"newsletters:{name}": [1]
        for name in (
            "domain",
            "domain_check",
            "domain_remove",
            "list",
            "list_edit",
            "list_import",
            "list_export",
            "campaign_new",
            "import",
            "campaign",
            "campaign_progress",
            "campaign_preview",
            "campaign_schedule",
            "campaign_test",
        )
    },
    "provisioning:staff_node": [1],
    "provisioning:staff_node_enroll": [1],
    "newsletters:staff_domain_override": [1],
    "newsletters:subscriber": [1, 1],
    "newsletters:subscriber_remove": [1, 1],
    "newsletters:campaign_action": [1, "pause"],
}
# Third-party URL sets with their own access rules (allauth's flows, Django's admin).
FOREIGN_PREFIXES = ("accounts/", "admin/")


def project_urls() -> list[tuple[str, URLPattern]]:
    found: list[tuple[str, URLPattern]] = []

    def walk(patterns, prefix: str, namespace: str | None) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if route.startswith(FOREIGN_PREFIXES):
                continue
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route, p.namespace or namespace)
            else:
                name = f"{namespace}:{p.name}" if namespace else p.name
                found.append((name, p))

    walk(get_resolver().url_patterns, "", None)
    return found


def url_for(name: str, alice_application: Application, other_application: Application) -> str:
    if name == "application_detail":
        return reverse(name, args=[alice_application.pk])
    if name == "staff_application_decide":
        return reverse(name, args=[other_application.pk])
    return reverse(name, args=ARGS.get(name, []))


@pytest.fixture
def objects(alice, dave):
    return Application.objects.get(user=alice), pending_application(dave)


def test_every_project_url_is_classified():
    names = {name for name, _ in project_urls()}
    member_pages = {
        "dashboard",
        "membership",
        "membership_apply",
        "application_detail",
        "membership_leave",
        "activity",
        "billing",
        "statement",
        "statement_csv",
    }
    unknown = names - PUBLIC - MEMBERS_ONLY - MEMBERS_OBJECTS - BOOKS - STAFF_ONLY - member_pages
    assert not unknown, f"classify these URLs in test_access.py: {sorted(unknown)}"


def test_anonymous_is_sent_to_login_everywhere_but_public_pages(client, objects):
    for name, _pattern in project_urls():
        if name in PUBLIC:
            continue
        url = url_for(name, *objects)
        response = client.get(url)
        assert response.status_code == 302, (name, response.status_code)
        assert response["Location"].startswith(reverse("account_login")), name


def test_services_are_for_members_in_good_standing(client, alice, dave, carol):
    from panel import services

    for name in MEMBERS_ONLY:
        client.force_login(dave)
        response = client.get(reverse(name))
        assert response.status_code == 403, name
        assert "Only members in good standing" in response.content.decode()
        client.force_login(alice)
        assert client.get(reverse(name)).status_code in (200, 405), name  # 405: POST-only
    services.membership_suspend(user=alice, actor=carol, reason="test")
    for name in MEMBERS_ONLY:
        assert client.get(reverse(name)).status_code == 403, name


def test_the_books_refuse_applicants_and_suspended_members(client, alice, dave, carol):
    for name in BOOKS:
        client.force_login(dave)
        assert client.get(reverse(name)).status_code == 403, name
        client.force_login(alice)
        assert client.get(reverse(name)).status_code == 200, name
    from panel import services

    services.membership_suspend(user=alice, actor=carol, reason="test")
    for name in BOOKS:
        assert client.get(reverse(name)).status_code == 403, name


def test_staff_pages_refuse_members(client, alice, objects):
    client.force_login(alice)
    for name in STAFF_ONLY:
        response = client.get(url_for(name, *objects))
        assert response.status_code in (403, 405), name


def test_another_members_application_is_a_404(client, alice, bob):
    alices = Application.objects.get(user=alice)
    client.force_login(bob)
    response = client.get(reverse("application_detail", args=[alices.pk]))
    assert response.status_code == 404
    assert "not yours" in response.content.decode()
    client.force_login(alice)
    assert client.get(reverse("application_detail", args=[alices.pk])).status_code == 200


def test_error_pages_are_friendly(client, alice):
    client.force_login(alice)
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert "There is nothing here" in response.content.decode()
