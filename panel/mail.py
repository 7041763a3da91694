"""Emails from templates: every message has a text part and an HTML part."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import translation


def render_templated_mail(
    prefix: str, *, to: str, context: dict[str, Any], language: str | None = None
) -> EmailMultiAlternatives:
    """Render ``{prefix}_subject.txt``, ``{prefix}_message.txt`` and ``{prefix}_message.html``."""
    ctx = {"coop_name": settings.COOP_NAME, "base_url": settings.PANEL_BASE_URL, **context}
    with translation.override(language or settings.LANGUAGE_CODE):
        subject = " ".join(render_to_string(f"{prefix}_subject.txt", ctx).split())
        text = render_to_string(f"{prefix}_message.txt", ctx).strip()
        html = render_to_string(f"{prefix}_message.html", ctx).strip()
    message = EmailMultiAlternatives(
        subject=f"{settings.ACCOUNT_EMAIL_SUBJECT_PREFIX}{subject}",
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
    )
    message.attach_alternative(html, "text/html")
    return message


def send_templated_mail(prefix: str, *, to: str, context: dict[str, Any]) -> None:
    user = context.get("user") or getattr(context.get("application"), "user", None)
    language = getattr(user, "language", "") or None
    render_templated_mail(prefix, to=to, context=context, language=language).send()
