"""A strict Content-Security-Policy on every response, with a fresh nonce per request.

The policy is what stops injected markup from running: no inline scripts, styles or event
handlers are allowed, so none may be in a page either (they would be blocked and the page
broken). The pages are walked as they are served, and the templates are read as written, so
that a part a test's data does not reach is checked too.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from allauth.account.models import EmailAddress
from django.http import HttpResponse
from django.test import override_settings
from django.urls import NoReverseMatch, reverse

from panel.checks import check_csp
from panel.csp import ContentSecurityPolicyMiddleware
from panel.models import Application
from tests.conftest import ROOT, pending_application
from tests.factories import make_user
from tests.panel.test_access import project_urls, url_for

HEADER = "Content-Security-Policy"
# What must hold, directive by directive, whatever else the policy says.
REQUIRED = {
    "default-src": {"'self'"},
    "object-src": {"'none'"},
    "base-uri": {"'self'"},
    "frame-ancestors": {"'none'"},
    "form-action": {"'self'"},
}
NONCE = re.compile(r"'nonce-([A-Za-z0-9_+/=-]{22,})'")
LOOSE = ("'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "*", "data:", "http:", "https:")
# Pages a person reaches in allauth, signed in or not; those that need a key or a pending
# login step redirect, which is a response like any other.
ACCOUNT_PAGES_ANONYMOUS = [
    "account_login",
    "account_signup",
    "account_reset_password",
    "account_reset_password_done",
    "account_email_verification_sent",
    "account_inactive",
    "account_reset_password_from_key_done",
]
ACCOUNT_PAGES_SIGNED_IN = [
    "account_email",
    "account_change_password",
    "account_logout",
    "account_reauthenticate",
    "mfa_index",
    "mfa_activate_totp",
    "mfa_view_recovery_codes",
]
APPS = ("panel", "provisioning", "telephony", "newsletters")
# Public pages that take arguments (tests/panel/test_access.py needs none for them): an
# unknown list or token gives the app's own error page, a page like the others.
PUBLIC_ARGS: dict[str, list[object]] = {
    "newsletters:signup": ["no-such-list"],
    "newsletters:archive": ["no-such-list"],
    "newsletters:archive_item": ["no-such-list", 1],
    "newsletters:archive_item_page": ["no-such-list", 1],
    "newsletters:confirm": ["no-such-token"],
    "newsletters:unsubscribe": ["no-such-token"],
}


def policy_of(response) -> dict[str, list[str]]:
    header = response.get(HEADER)
    assert header, f"{response.request['PATH_INFO']}: no {HEADER} header"
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            assert words[0] not in directives, f"{words[0]} twice in {header!r}"
            directives[words[0]] = words[1:]
    return directives


def nonce_of(response) -> str:
    """The request's nonce, checked to be the one of both script-src and style-src."""
    policy = policy_of(response)
    path = response.request["PATH_INFO"]
    for name, want in REQUIRED.items():
        assert set(policy.get(name, [])) == want, (path, name, policy.get(name))
    nonces = set()
    for name in ("script-src", "style-src"):
        sources = policy.get(name)
        assert sources, (path, f"{name} missing: default-src alone would not carry the nonce")
        assert "'self'" in sources, (path, name, sources)
        assert not set(sources) & set(LOOSE), (path, name, sources)
        found = [m.group(1) for s in sources if (m := NONCE.fullmatch(s))]
        assert len(found) == 1, (path, name, sources)
        nonces.add(found[0])
    assert len(nonces) == 1, (path, "script-src and style-src carry different nonces")
    for name, sources in policy.items():
        if name not in ("img-src",):
            assert not set(sources) & set(LOOSE), (path, name, sources)
    return nonces.pop()


class InlineFinder(HTMLParser):
    """Markup the policy would block: inline scripts, styles and handlers without the nonce."""

    def __init__(self, nonce: str) -> None:
        super().__init__(convert_charrefs=True)
        self.nonce = nonce
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for name, value in attrs:
            handler = name.startswith(("on", "hx-on"))
            script_url = (value or "").strip().lower().startswith("javascript:")
            if name == "style" or handler or script_url:
                self.found.append(f"<{tag} {name}={value!r}>")
        data_only = named.get("type") in ("application/json", "application/ld+json")
        inline = tag == "script" and "src" not in named and not data_only
        if inline and named.get("nonce") != self.nonce:
            self.found.append("<script> inline without the request's nonce")
        if tag == "style" and named.get("nonce") != self.nonce:
            self.found.append("<style> without the request's nonce")


def assert_strict_page(response, seen: set[str]) -> None:
    nonce = nonce_of(response)
    assert nonce not in seen, "a nonce was used twice"
    seen.add(nonce)
    context = response.context
    if context is not None and "csp_nonce" in context:
        assert str(context["csp_nonce"]) == nonce
    if response.get("Content-Type", "").startswith("text/html") and not response.streaming:
        finder = InlineFinder(nonce)
        finder.feed(response.content.decode())
        assert not finder.found, (response.request["PATH_INFO"], finder.found)


def sample_url(name: str, pattern, objects) -> str:
    """The URL test_access.py walks; for a URL it has no arguments for (yet), 1 or "x" each."""
    if name in PUBLIC_ARGS:
        return reverse(name, args=PUBLIC_ARGS[name])
    try:
        return url_for(name, *objects)
    except NoReverseMatch:
        converters = getattr(pattern.pattern, "converters", {})
        args = [1 if type(c).__name__ == "IntConverter" else "x" for c in converters.values()]
        return reverse(name, args=args)


@pytest.fixture
def objects(alice, dave):
    return Application.objects.get(user=alice), pending_application(dave)


def test_every_project_page_carries_the_policy_with_a_fresh_nonce(client, carol, alice, objects):
    seen: set[str] = set()
    for user in (None, alice, carol):
        client.logout()
        if user is not None:
            client.force_login(user)
        for name, pattern in project_urls():
            assert_strict_page(client.get(sample_url(name, pattern, objects)), seen)


def test_the_same_page_gets_a_new_nonce_each_time(client, alice):
    client.force_login(alice)
    first = nonce_of(client.get(reverse("dashboard")))
    second = nonce_of(client.get(reverse("dashboard")))
    assert first != second


def test_account_pages_error_pages_and_json_carry_it_too(client, alice):
    seen: set[str] = set()
    for name in ACCOUNT_PAGES_ANONYMOUS:
        assert_strict_page(client.get(reverse(name)), seen)
    # A change of address waiting for its confirmation: allauth's page has a hidden form.
    EmailAddress.objects.create(user=alice, email="alice.new@example.org", verified=False)
    client.force_login(alice)
    for name in ACCOUNT_PAGES_SIGNED_IN:
        assert_strict_page(client.get(reverse(name)), seen)
    assert "alice.new@example.org" in client.get(reverse("account_email")).content.decode()
    assert_strict_page(client.get("/no/such/page/"), seen)
    assert_strict_page(client.get(reverse("healthz")), seen)
    assert_strict_page(client.post(reverse("dashboard")), seen)  # 405


def test_admin_pages_carry_it(client, carol):
    from django.contrib import admin

    seen: set[str] = set()
    client.force_login(carol)
    assert_strict_page(client.get(reverse("admin:index")), seen)
    for model in admin.site._registry:
        meta = model._meta
        changelist = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        assert changelist.status_code == 200, meta.label
        assert_strict_page(changelist, seen)
        add = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_add"))
        assert add.status_code in (200, 403), meta.label
        assert_strict_page(add, seen)


@override_settings(DEBUG=True)
def test_it_is_no_effect_of_debug(client, alice):
    client.force_login(alice)
    nonce_of(client.get(reverse("dashboard")))


def test_a_server_error_page_carries_it(client, alice, monkeypatch):
    from panel.views import core

    def broken(user):
        raise RuntimeError("boom")

    monkeypatch.setattr(core.selectors, "dashboard_for", broken)
    client.raise_request_exception = False
    client.force_login(alice)
    response = client.get(reverse("dashboard"))
    assert response.status_code == 500
    assert_strict_page(response, set())


def test_htmx_is_told_to_inject_no_styles_and_evaluate_nothing(client):
    """htmx adds a <style> for its indicators unless told not to; eval stays off as well."""
    page = client.get(reverse("home")).content.decode()
    match = re.search(r"""<meta name="htmx-config" content=(["'])(.*?)\1>""", page)
    assert match, "no htmx-config meta"
    import html
    import json

    config = json.loads(html.unescape(match.group(2)))
    assert config["includeIndicatorStyles"] is False
    assert config["allowEval"] is False
    assert config["allowScriptTags"] is False
    # The meta must come before htmx itself, which reads it when it starts.
    assert page.index('name="htmx-config"') < page.index("htmx.min.js")


def test_the_vendored_htmx_knows_the_options_it_is_given():
    (script,) = (ROOT / "panel" / "static" / "vendor").glob("htmx-*/htmx.min.js")
    source = script.read_text()
    for option in ("includeIndicatorStyles:true", "allowEval:true", "allowScriptTags:true"):
        assert option in source, f"{script}: the default {option} is gone; check the config"


def _templates() -> list[Path]:
    found = []
    for app in APPS:
        for path in sorted((ROOT / app / "templates").rglob("*.html")):
            # Emails are not pages: mail clients need their inline styles, no policy applies.
            if "email" in path.relative_to(ROOT / app / "templates").parts:
                continue
            found.append(path)
    return found


TEMPLATE_FAULTS = [
    (re.compile(r"""\sstyle\s*=""", re.I), "a style attribute"),
    (re.compile(r"<style\b(?![^>]*\bnonce=)", re.I), "a <style> element without the nonce"),
    (
        re.compile(r"<script\b(?![^>]*\b(?:src|nonce)=)(?![^>]*application/json)", re.I),
        "an inline <script> without the nonce",
    ),
    (re.compile(r"""\son[a-z]+\s*=\s*["'{]""", re.I), "an on* event handler"),
    (re.compile(r"""\s(?:data-)?hx-on""", re.I), "hx-on (needs eval)"),
    (re.compile(r"""\s(?:data-)?hx-vars""", re.I), "hx-vars (needs eval)"),
    (re.compile(r"""=\s*["']\s*(?:javascript|js):""", re.I), "a javascript: value"),
]


@pytest.mark.parametrize("path", _templates(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_template_needs_unsafe_inline(path: Path):
    source = path.read_text()
    faults = [
        f"line {source.count(chr(10), 0, m.start()) + 1}: {why}: {m.group(0).strip()!r}"
        for pattern, why in TEMPLATE_FAULTS
        for m in pattern.finditer(source)
    ]
    assert not faults, faults


def test_the_template_check_finds_what_it_looks_for():
    bad = [
        '<span style="height: 3%">',
        "<style>p{}</style>",
        "<script>alert(1)</script>",
        '<button onclick="go()">',
        '<div hx-on:click="go()">',
        '<a href="javascript:go()">',
    ]
    for sample in bad:
        assert any(p.search(sample) for p, _why in TEMPLATE_FAULTS), sample
    good = [
        '<script src="/static/x.js" defer></script>',
        '<script nonce="{{ csp_nonce }}">x()</script>',
        '<script type="application/json" id="data">{}</script>',
        '<div hx-get="/x" hx-trigger="every 1s">',
        '<p class="style">on time</p>',
    ]
    for sample in good:
        assert not any(p.search(sample) for p, _why in TEMPLATE_FAULTS), sample


def test_a_view_that_sets_its_own_policy_keeps_it(rf, settings):
    def own(request):
        response = HttpResponse("<p>member HTML</p>")
        response[HEADER] = "sandbox; default-src 'none'"
        return response

    response = ContentSecurityPolicyMiddleware(own)(rf.get("/"))
    assert response[HEADER] == "sandbox; default-src 'none'"


def test_deploy_check_refuses_a_weak_or_missing_policy(settings):
    assert check_csp(None) == []
    settings.SECURE_CSP = {**settings.SECURE_CSP, "script-src": ["'self'", "'unsafe-inline'"]}
    assert [w.id for w in check_csp(None)] == ["panel.W001"]
    settings.SECURE_CSP = {k: v for k, v in settings.SECURE_CSP.items() if k != "object-src"}
    assert "panel.W001" in [w.id for w in check_csp(None)]
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.startswith("panel.csp")]
    assert "panel.W002" in [w.id for w in check_csp(None)]


def test_nothing_in_a_signed_up_strangers_way(client, db):
    """The walk above as someone who only signed up: the same policy on the refusals."""
    client.force_login(make_user(email="stranger@example.org"))
    seen: set[str] = set()
    for name in ("dashboard", "membership", "membership_apply", "commune", "billing"):
        assert_strict_page(client.get(reverse(name)), seen)
