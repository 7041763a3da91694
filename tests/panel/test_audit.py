from allauth.account.models import EmailAddress
from django.urls import reverse

from panel import services
from panel.models import AuditEntry, Statutes
from tests.factories import PASSWORD


def test_member_sees_what_an_admin_did_to_their_membership(client, alice, carol):
    services.membership_suspend(user=alice, actor=carol, reason="unpaid invoices")
    entry = AuditEntry.objects.get(owner=alice, action="membership.suspended")
    assert entry.actor == carol
    assert entry.actor_is_admin
    assert (entry.before or {}).get("status") == "member"
    assert (entry.after or {}).get("status") == "suspended"
    client.force_login(alice)
    page = client.get(reverse("activity")).content.decode()
    assert "Membership suspended" in page
    assert 'title="membership.suspended"' in page
    assert "carol@example.org" in page
    assert "unpaid invoices" in page


def test_a_member_does_not_see_another_members_entries(client, alice, bob, carol):
    services.membership_suspend(user=alice, actor=carol, reason="secret reason about alice")
    client.force_login(bob)
    page = client.get(reverse("activity")).content.decode()
    assert "secret reason about alice" not in page
    assert "alice@example.org" not in page


def test_admin_edit_in_django_admin_is_audited_with_before_and_after(client, alice, carol):
    client.force_login(carol)
    url = reverse("admin:panel_user_change", args=[alice.pk])
    form = client.get(url).context["adminform"].form
    data = {
        k: v
        for k, v in form.initial.items()
        if v is not None and k not in {"groups", "user_permissions", "password"}
    }
    data.update(
        first_name=f"{alice.first_name} Renamed",
        last_login_0="",
        last_login_1="",
        date_joined_0="2026-01-01",
        date_joined_1="10:00:00",
    )
    data["is_active"] = "on"
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(owner=alice, action="admin.changed")
    assert (entry.before or {}).get("first_name") == alice.first_name
    assert (entry.after or {}).get("first_name") == f"{alice.first_name} Renamed"
    assert "password" not in (entry.after or {})


def test_admin_bulk_action_on_another_apps_model_is_audited(client, carol):
    from tests.factories import make_user

    erin = make_user(verified=False)
    address = EmailAddress.objects.create(user=erin, email=erin.email, verified=False, primary=True)
    client.force_login(carol)
    response = client.post(
        reverse("admin:account_emailaddress_changelist"),
        {"action": "make_verified", "_selected_action": [address.pk]},
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.get(owner=erin, action="admin.action.make_verified")
    assert (entry.before or {}).get("verified") is False
    assert (entry.after or {}).get("verified") is True


def test_statutes_are_published_as_a_new_version_from_the_admin(client, carol, statutes):
    client.force_login(carol)
    response = client.post(
        reverse("admin:panel_statutes_add"), {"title": "Statutes 2027", "text": "§1 New."}
    )
    assert response.status_code == 302
    newest = Statutes.objects.order_by("-version")[0]
    assert newest.version == statutes.version + 1
    assert newest.published_by == carol
    assert (
        AuditEntry.objects.filter(action="statutes.published", object_id=str(newest.pk)).count()
        == 1
    )
    # The old version cannot be edited: applicants agreed to its exact text.
    change = client.post(
        reverse("admin:panel_statutes_change", args=[statutes.pk]), {"title": "x", "text": "y"}
    )
    assert change.status_code == 403
    statutes.refresh_from_db()
    assert statutes.title == "Statutes"


def test_password_change_is_audited_without_the_password(client, alice):
    client.post(reverse("account_login"), {"login": alice.email, "password": PASSWORD})
    response = client.post(
        reverse("account_change_password"),
        {
            "oldpassword": PASSWORD,
            "password1": "a new long passphrase 42",
            "password2": "a new long passphrase 42",
        },
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.get(owner=alice, action="account.password_changed")
    assert entry.before is None
    assert entry.after is None
