"""Who may read the commune's books: members in good standing and staff who keep the books.

The statutes give the commune's result to the members, split one share each (§4 of the demo
statutes); its books are theirs, not every signed-up account's.
"""

from __future__ import annotations

import html

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from panel import services
from tests.factories import make_user
from tests.panel.ledger.test_pages import closed_october

__all__ = ["closed_october"]

REFUSED = "Only members in good standing may see the commune's books."


def _books_shown(page: str) -> bool:
    # The closed period, its cost recovery (0.50 + 0.12) and the part per head.
    return "2026-10" in page and "0.62" in page and "0.31" in page


def test_a_member_in_good_standing_sees_the_books(client, bob, closed_october):
    client.force_login(bob)
    response = client.get(reverse("commune"))
    assert response.status_code == 200
    assert _books_shown(response.content.decode())


def test_an_applicant_does_not(client, dave, closed_october):
    client.force_login(dave)
    response = client.get(reverse("commune"))
    assert response.status_code == 403
    page = html.unescape(response.content.decode())
    assert REFUSED in page
    assert not _books_shown(page)


def test_a_suspended_member_does_not(client, alice, carol, closed_october):
    services.membership_suspend(user=alice, actor=carol, reason="unpaid")
    client.force_login(alice)
    response = client.get(reverse("commune"))
    assert response.status_code == 403
    assert REFUSED in html.unescape(response.content.decode())
    assert not _books_shown(response.content.decode())


def test_a_signed_up_stranger_does_not(client, closed_october):
    client.force_login(make_user(email="stranger@example.org"))
    response = client.get(reverse("commune"))
    assert response.status_code == 403
    assert not _books_shown(response.content.decode())


def test_anonymous_is_sent_to_sign_in(client, closed_october):
    response = client.get(reverse("commune"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_staff_who_keep_the_books_see_them(client, carol, closed_october):
    # carol is an admin, not a member.
    assert not hasattr(carol, "membership")
    client.force_login(carol)
    response = client.get(reverse("commune"))
    assert response.status_code == 200
    assert _books_shown(response.content.decode())

    clerk = make_user(email="clerk@example.org", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_billingperiod"))
    client.force_login(clerk)
    assert client.get(reverse("commune")).status_code == 200


@pytest.mark.parametrize("perms", [[], ["decide_application"]])
def test_other_staff_do_not(client, closed_october, perms):
    """Staff rights are per task: deciding applications is not keeping the books."""
    helper = make_user(email="helper@example.org", is_staff=True)
    for codename in perms:
        helper.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(helper)
    response = client.get(reverse("commune"))
    assert response.status_code == 403
    assert not _books_shown(response.content.decode())
