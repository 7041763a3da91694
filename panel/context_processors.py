from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def shell(request: HttpRequest) -> dict[str, Any]:
    """What the layout needs on every page; no queries, so it costs pages nothing."""
    match = getattr(request, "resolver_match", None)
    return {
        "coop_name": settings.COOP_NAME,
        "nav_section": (match.namespace or match.url_name) if match else "",
    }
