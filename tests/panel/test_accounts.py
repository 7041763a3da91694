"""Accounts through allauth, over HTTP, with the emails it sends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time
from pathlib import Path

import allauth
import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.core import mail
from django.template.loader import get_template
from django.urls import reverse

from panel.models import AuditEntry, User
from tests.conftest import first_link
from tests.factories import PASSWORD, make_user

NEW_PASSWORD = "a different long passphrase 7"


def totp(secret: str, at: float | None = None) -> str:
    """RFC 6238 TOTP (SHA-1, 30 s, 6 digits), written here to check allauth independently."""
    counter = int((at or time.time()) // 30)
    digest = hmac.new(
        base64.b32decode(secret, casefold=True), struct.pack(">Q", counter), hashlib.sha1
    ).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def assert_text_and_html(message: mail.EmailMessage) -> None:
    assert isinstance(message, mail.EmailMultiAlternatives), message.subject
    assert message.body.strip(), message.subject
    html = [str(content) for content, kind in message.alternatives if kind == "text/html"]
    assert html, message.subject
    assert "<html" in html[0], message.subject


def sign_in(client, email: str, password: str = PASSWORD):
    return client.post(reverse("account_login"), {"login": email, "password": password})


def test_signup_requires_email_verification_then_logs_in(client, db, mailoutbox):
    response = client.post(
        reverse("account_signup"),
        {"email": "Erin@Example.org", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    user = User.objects.get(email="erin@example.org")
    assert not EmailAddress.objects.get(user=user).verified
    # Not verified: logging in sends the person back to verification.
    client.logout()
    blocked = sign_in(client, "erin@example.org")
    assert blocked["Location"] == reverse("account_email_verification_sent")
    assert client.get(reverse("dashboard")).status_code == 302

    confirmation = mailoutbox[0]
    assert confirmation.to == ["erin@example.org"]
    assert_text_and_html(confirmation)
    link = first_link(confirmation.body)
    assert link in confirmation.alternatives[0][0], "the HTML part carries the same link"
    page = client.get(link)
    assert page.status_code == 200
    confirmed = client.post(link)
    assert confirmed.status_code == 302
    assert EmailAddress.objects.get(user=user).verified
    assert client.get(reverse("dashboard")).status_code == 200
    assert AuditEntry.objects.filter(owner=user, action="account.email_verified").exists()


def test_login_is_by_email_and_case_insensitive(client, alice):
    response = sign_in(client, "ALICE@example.org")
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")


def test_password_reset_by_email(client, alice, mailoutbox):
    client.post(reverse("account_reset_password"), {"email": alice.email})
    (message,) = mailoutbox
    assert_text_and_html(message)
    link = first_link(message.body)
    form_page = client.get(link, follow=True)
    action = form_page.redirect_chain[-1][0] if form_page.redirect_chain else link
    done = client.post(action, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert done.status_code == 302
    client.logout()
    assert sign_in(client, alice.email, NEW_PASSWORD)["Location"] == reverse("dashboard")
    assert AuditEntry.objects.filter(owner=alice, action="account.password_reset").exists()


def test_unknown_account_reset_sends_a_templated_email(client, db, mailoutbox):
    client.post(reverse("account_reset_password"), {"email": "nobody@example.org"})
    (message,) = mailoutbox
    assert_text_and_html(message)


def test_change_of_email_needs_verification_of_the_new_address(client, alice, mailoutbox):
    sign_in(client, alice.email)
    response = client.post(
        reverse("account_email"), {"email": "alice.new@example.org", "action_add": ""}
    )
    assert response.status_code == 302
    # Until confirmed, the old address stays the login and the primary address.
    assert EmailAddress.objects.get(user=alice, primary=True).email == "alice@example.org"
    confirmation = next(m for m in mailoutbox if m.to == ["alice.new@example.org"])
    assert_text_and_html(confirmation)
    client.post(first_link(confirmation.body))
    alice.refresh_from_db()
    assert alice.email == "alice.new@example.org"
    assert list(
        EmailAddress.objects.filter(user=alice).values_list("email", "verified", "primary")
    ) == [("alice.new@example.org", True, True)]
    # The old address is told about the change.
    notice = next(m for m in mailoutbox if m.to == ["alice@example.org"])
    assert_text_and_html(notice)
    assert AuditEntry.objects.filter(owner=alice, action="account.email_changed").exists()


@pytest.mark.django_db(transaction=True)
def test_totp_with_recovery_codes_can_be_turned_on_and_off(client, alice, mailoutbox):
    """Real commits: allauth announces MFA changes (signal, email) once they are committed."""
    sign_in(client, alice.email)
    # Security settings ask for the password again, however recent the sign-in.
    assert "reauthenticate" in client.get(reverse("mfa_activate_totp"))["Location"]
    assert client.post(reverse("account_reauthenticate"), {"password": PASSWORD}).status_code == 302
    page = client.get(reverse("mfa_activate_totp"))
    secret = re.search(r'id="authenticator_secret"[^>]*value="([A-Z2-7=]+)"', page.content.decode())
    assert secret, "the activation page shows the secret for manual entry"
    wrong = client.post(reverse("mfa_activate_totp"), {"code": "000000"})
    assert wrong.status_code == 200
    assert 'aria-invalid="true"' in wrong.content.decode()
    activated = client.post(reverse("mfa_activate_totp"), {"code": totp(secret.group(1))})
    assert activated.status_code == 302
    assert set(Authenticator.objects.filter(user=alice).values_list("type", flat=True)) == {
        "totp",
        "recovery_codes",
    }
    codes = client.get(reverse("mfa_view_recovery_codes")).context["unused_codes"]
    assert len(codes) >= 10

    # Now a password alone is not enough.
    client.logout()
    step = sign_in(client, alice.email)
    assert step["Location"] == reverse("mfa_authenticate")
    assert client.get(reverse("dashboard")).status_code == 302
    assert client.post(reverse("mfa_authenticate"), {"code": codes[0]}).status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200

    # Turn it off again, after proving it is still alice (with a second recovery code).
    assert "reauthenticate" in client.post(reverse("mfa_deactivate_totp"))["Location"]
    assert client.post(reverse("mfa_reauthenticate"), {"code": codes[1]}).status_code == 302
    deactivate = client.post(reverse("mfa_deactivate_totp"))
    assert deactivate.status_code == 302
    assert not Authenticator.objects.filter(user=alice, type="totp").exists()
    actions = set(AuditEntry.objects.filter(owner=alice).values_list("action", flat=True))
    assert {"mfa.added", "mfa.removed"} <= actions
    for message in mailoutbox:
        assert_text_and_html(message)
    subjects = " ".join(m.subject for m in mailoutbox)
    assert "Authenticator App Activated" in subjects
    assert "Authenticator App Deactivated" in subjects


def test_failed_logins_are_rate_limited_per_address(client, alice):
    for _ in range(5):
        response = sign_in(client, alice.email, "wrong password")
        assert response.status_code == 200
    limited = sign_in(client, alice.email, PASSWORD)
    assert limited.status_code in (200, 429)
    assert "Too many failed login attempts" in limited.content.decode()
    assert client.get(reverse("dashboard")).status_code == 302


def test_signup_is_rate_limited_per_ip(client, db, settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "signup": "3/m/ip"}
    codes = []
    for n in range(4):
        client.logout()
        response = client.post(
            reverse("account_signup"),
            {"email": f"p{n}@example.org", "password1": PASSWORD, "password2": PASSWORD},
        )
        codes.append(response.status_code)
    assert codes[:3] == [302, 302, 302]
    assert codes[3] == 429


def test_every_allauth_email_has_an_html_template_that_renders(rf, alice):
    """allauth sends more emails than one test flow reaches; each has its HTML twin."""
    from allauth.core import context

    root = Path(allauth.__file__).parent / "templates"
    templates = sorted(root.glob("account/email/*_message.txt")) + sorted(
        root.glob("mfa/email/*_message.txt")
    )
    templates = [t for t in templates if t.name != "base_message.txt"]
    assert len(templates) > 15
    request = rf.get("/")
    request.user = alice
    ctx = {
        "user": alice,
        "activate_url": "http://testserver/x",
        "password_reset_url": "http://testserver/y",
        "code": "ABC123",
        "from_email": "a@example.org",
        "to_email": "b@example.org",
        "signup_url": "http://testserver/s",
        "ip": "127.0.0.1",
        "user_agent": "test",
        "timestamp": "now",
        "current_site": type("Site", (), {"name": "panel", "domain": "testserver"})(),
    }
    with context.request_context(request):
        for txt in templates:
            name = str(txt.relative_to(root)).replace(".txt", ".html")
            html = get_template(name).render(ctx, request)
            assert "<html" in html, name


@pytest.mark.parametrize("email", ["carol@example.org"])
def test_a_verified_user_created_by_factory_can_sign_in(client, db, email):
    make_user(email=email)
    assert sign_in(client, email)["Location"] == reverse("dashboard")
