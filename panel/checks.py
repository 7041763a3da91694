"""System checks of our own, run with ``manage.py check --deploy``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

from panel.csp import CSP

# What the panel's policy must say; a deployment may add to it, not loosen it.
CSP_REQUIRED = {
    "default-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}
CSP_LOOSE = {"'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "*", "data:", "http:", "https:"}


@register(Tags.security, deploy=True)
def check_csp(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """The Content-Security-Policy is what keeps injected markup from running: warn when it
    is missing or would let inline code run."""
    found: list[CheckMessage] = []
    policy = getattr(settings, "SECURE_CSP", None) or {}
    problems = [
        f"{name} must be {' '.join(sources)}"
        for name, sources in CSP_REQUIRED.items()
        if list(policy.get(name, [])) != sources
    ]
    for name, sources in policy.items():
        # Images may come as data: URIs (the TOTP QR code); they cannot run code.
        loose = set(sources) & (CSP_LOOSE - ({"data:"} if name == "img-src" else set()))
        if loose:
            problems.append(f"{name} allows {' '.join(sorted(loose))}")
    for name in ("script-src", "style-src"):
        if name not in policy:
            problems.append(f"{name} is missing")
    if problems:
        found.append(
            Warning(
                "SECURE_CSP is weaker than the panel's policy: " + "; ".join(problems),
                id="panel.W001",
            )
        )
    if "panel.csp.ContentSecurityPolicyMiddleware" not in settings.MIDDLEWARE:
        found.append(
            Warning(
                "panel.csp.ContentSecurityPolicyMiddleware is not in MIDDLEWARE: "
                "no Content-Security-Policy is sent",
                id="panel.W002",
            )
        )
    return found
