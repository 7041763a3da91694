"""Allowlist checks for everything a member or a stranger types that ends up in mail or DNS.

Addresses, names and subjects go into message headers and SMTP commands; domains go into DNS
queries. Each is matched against a pattern of what is allowed, never cleaned of what is not.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.utils.translation import gettext as _


class InvalidInput(ValueError):
    """A value that does not pass its allowlist; the message says which value and why."""


# dot-atom local parts only (RFC 5322 3.2.3): no quoted strings, no comments.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TLD = re.compile(r"([a-z]{2,63}|xn--[a-z0-9-]{1,59})")
_SLUG = re.compile(r"[a-z0-9]([a-z0-9-]{0,58}[a-z0-9])?")
# Header text: printable characters of any script, no control characters (so no CR or LF).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(value: str, limit: int = 100) -> str:
    """A value as an error message may quote it: control characters escaped, cut short."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], value[:limit])


def domain_name(value: str) -> str:
    """A DNS domain a member sends from, lower-cased, IDN as punycode."""
    text = value.strip().rstrip(".").lower()
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput(
            _("%(value)s is not a valid domain name.") % {"value": shown(value)}
        ) from None
    labels = text.split(".")
    if (
        len(text) > 253
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or not _TLD.fullmatch(labels[-1])
    ):
        raise InvalidInput(_("%(value)s is not a valid domain name.") % {"value": shown(value)})
    return text


def normalise_email(value: str) -> str:
    """An address as the lists keep it: trimmed and lower-cased, domain as punycode.

    Lists compare addresses without regard to case (as Mailman and listmonk do); one person
    typing Alice@ and alice@ must not get two copies.
    """
    text = value.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or len(local) > 64 or not _LOCAL.fullmatch(local):
        raise InvalidInput(_("%(value)s is not a valid email address.") % {"value": shown(value)})
    try:
        domain = domain_name(domain)
    except InvalidInput:
        raise InvalidInput(
            _("%(value)s is not a valid email address.") % {"value": shown(value)}
        ) from None
    address = f"{local.lower()}@{domain}"
    if len(address) > 254:
        raise InvalidInput(
            _("%(value)s is too long for an email address.") % {"value": shown(value)}
        )
    return address


def local_part(value: str) -> str:
    text = value.strip().lower()
    if len(text) > 64 or not _LOCAL.fullmatch(text):
        raise InvalidInput(_("%(value)s cannot stand before the @.") % {"value": shown(value)})
    return text


def slug(value: str) -> str:
    text = value.strip().lower()
    if not _SLUG.fullmatch(text):
        raise InvalidInput(
            _("Use 1 to 60 lower-case letters, digits and hyphens (not at either end).")
        )
    return text


def header_text(value: str, what: str, *, max_length: int) -> str:
    """Text for a header (a subject, a display name): one line, no control characters."""
    text = value.strip()
    if _CONTROL.search(text):
        raise InvalidInput(
            _("%(what)s must be one line without control characters.") % {"what": what}
        )
    if len(text) > max_length:
        raise InvalidInput(
            _("%(what)s is longer than %(max)d characters.") % {"what": what, "max": max_length}
        )
    return text


def body_text(value: str, what: str) -> str:
    """A message body: limited in size (it is sent once per subscriber)."""
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    size = len(text.encode("utf-8"))
    limit = settings.NEWSLETTER_MAX_BODY_BYTES
    if size > limit:
        raise InvalidInput(
            _("%(what)s is %(size)d KiB; the limit is %(limit)d KiB.")
            % {"what": what, "size": size // 1024, "limit": limit // 1024}
        )
    if "\x00" in text:
        raise InvalidInput(_("%(what)s contains a NUL character.") % {"what": what})
    return text
