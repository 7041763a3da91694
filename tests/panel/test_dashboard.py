import pytest
from django.urls import reverse

from panel.models import AuditEntry
from tests.factories import make_user

MAX_QUERIES = 10


@pytest.mark.parametrize("who", ["alice", "dave", "carol", "newcomer"])
def test_dashboard_renders_in_at_most_ten_queries(
    request, db, client, django_assert_max_num_queries, who
):
    user = make_user() if who == "newcomer" else request.getfixturevalue(who)
    # Plenty of history must not change the count.
    for n in range(30):
        AuditEntry.objects.create(
            actor_label="system",
            action="test.noise",
            object_type="x",
            object_id=str(n),
            object_repr="x",
            owner=user,
        )
    client.force_login(user)
    with django_assert_max_num_queries(MAX_QUERIES):
        response = client.get(reverse("dashboard"))
    assert response.status_code == 200


def test_dashboard_shows_membership_and_share(client, alice):
    client.force_login(alice)
    page = client.get(reverse("dashboard")).content.decode()
    assert "Share No." in page
    assert "Member" in page


def test_dashboard_invites_a_newcomer_to_apply(client, db, statutes):
    client.force_login(make_user())
    page = client.get(reverse("dashboard")).content.decode()
    assert reverse("membership_apply") in page


def test_admin_dashboard_counts_waiting_applications(client, carol, dave):
    client.force_login(carol)
    page = client.get(reverse("dashboard")).content.decode()
    assert "1 application waiting" in page


def test_shell_has_navigation_and_vendored_assets(client, alice):
    client.force_login(alice)
    page = client.get(reverse("dashboard")).content.decode()
    for label in ["Dashboard", "Hosting", "Newsletters", "Calls", "Billing", "Commune"]:
        assert f">{label}</a>" in page, label
    assert "/static/vendor/htmx-2.0.11/htmx.min.js" in page
    assert "https://" not in page.split("<body")[0], "no asset from a CDN"
    assert 'href="#content"' in page, "skip link"


def test_500_page_renders_without_a_request(db):
    from django.template.loader import render_to_string

    html = render_to_string("500.html")
    assert "Something went wrong" in html
