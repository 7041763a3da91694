"""Content-Security-Policy on every response, with a fresh nonce per request.

Django 5.2 has none built in. This mirrors the shape of Django 6.0's (``SECURE_CSP`` as a dict
of directives, ``CSP.NONCE`` as the placeholder, ``csp_nonce`` in templates), so that moving
to 6.0 is a matter of swapping this middleware and context processor for
``django.middleware.csp.ContentSecurityPolicyMiddleware`` and
``django.template.context_processors.csp``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

HEADER = "Content-Security-Policy"


class CSP:
    """Source expressions, quoted as the header needs them."""

    SELF = "'self'"
    NONE = "'none'"
    # Replaced by 'nonce-…' with the request's nonce.
    NONCE = "<CSP_NONCE_SENTINEL>"


def build_policy(directives: Mapping[str, Sequence[str]], nonce: str) -> str:
    parts = []
    for name, sources in directives.items():
        values = [f"'nonce-{nonce}'" if s == CSP.NONCE else s for s in sources]
        parts.append(" ".join([name, *values]))
    return "; ".join(parts)


def request_nonce(request: HttpRequest) -> str:
    """The request's nonce; one is made for requests the middleware has not seen (tests)."""
    nonce = getattr(request, "csp_nonce", None)
    if nonce is None:
        nonce = secrets.token_urlsafe(16)
        request.csp_nonce = nonce  # type: ignore[attr-defined]
    return str(nonce)


class ContentSecurityPolicyMiddleware:
    """Sends ``SECURE_CSP`` with every response, whatever DEBUG says.

    Outermost in MIDDLEWARE, so that redirects made by the middlewares below it (HTTPS, the
    sign-in) and error pages carry it too. A response that already has the header keeps it:
    a view serving something else than our pages (a sandboxed preview) states its own.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        # Made up front, so that templates and the header agree; 16 random bytes per request.
        request.csp_nonce = secrets.token_urlsafe(16)  # type: ignore[attr-defined]
        response = self.get_response(request)
        directives = getattr(settings, "SECURE_CSP", None)
        if directives and HEADER not in response:
            response[HEADER] = build_policy(directives, request_nonce(request))
        return response


def nonce(request: HttpRequest) -> dict[str, Any]:
    """Context processor: ``csp_nonce`` for the rare element that cannot be a static file."""
    return {"csp_nonce": request_nonce(request)}
