"""Identifiers that leave the panel in mail: Message-IDs, VERP return paths, unsubscribe tokens.

Each carries a delivery or subscriber id and a short HMAC tag, so that what comes back (a
bounce, a complaint, a click) can be traced to its row without a lookup table, and a forged
report or link cannot touch someone else's subscription.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from django.conf import settings
from django.utils.crypto import constant_time_compare, salted_hmac


def _tag(purpose: str, value: str, length: int) -> str:
    digest = salted_hmac(f"newsletters.{purpose}", value, algorithm="sha256").digest()
    return base64.b32encode(digest).decode("ascii").lower()[:length]


def _check(purpose: str, value: str, tag: str, length: int) -> bool:
    return constant_time_compare(_tag(purpose, value, length), tag)


# Message-ID and VERP ---------------------------------------------------------------------

_DELIVERY = re.compile(r"d(\d{1,18})\.([a-z2-7]{10})")


def delivery_tag(delivery_id: int) -> str:
    return f"d{delivery_id}.{_tag('delivery', str(delivery_id), 10)}"


def message_id(delivery_id: int) -> str:
    """The Message-ID of a delivery, without angle brackets; the same on every attempt."""
    return f"{delivery_tag(delivery_id)}@{settings.NEWSLETTER_BOUNCE_DOMAIN}"


def return_path(delivery_id: int) -> str:
    """The VERP envelope sender: a bounce to it names the delivery."""
    return f"bounces+{delivery_tag(delivery_id)}@{settings.NEWSLETTER_BOUNCE_DOMAIN}"


def delivery_from_tag(text: str) -> int | None:
    match = _DELIVERY.fullmatch(text)
    if not match or not _check("delivery", match.group(1), match.group(2), 10):
        return None
    return int(match.group(1))


def delivery_from_message_id(value: str) -> int | None:
    local, _at, domain = value.strip().strip("<>").rpartition("@")
    if domain.lower() != settings.NEWSLETTER_BOUNCE_DOMAIN:
        return None
    return delivery_from_tag(local)


# Addresses on the bounce domain ----------------------------------------------------------


@dataclass(frozen=True)
class Inbound:
    kind: str  # "bounce", "unsubscribe", "feedback", "unknown"
    token: str = ""


_ADDRESS_CHARACTERS = re.compile(r"[\x21-\x7e]+")


def classify_recipient(address: str) -> Inbound:
    """What an address on the bounce domain is for (the SMTP endpoint accepts only these).

    Every address the panel hands out is printable ASCII; one with spaces, control characters
    or other scripts is nobody's here (and kept out of the database).
    """
    text = address.strip().strip("<>")
    if not _ADDRESS_CHARACTERS.fullmatch(text):
        return Inbound("unknown")
    local, _at, domain = text.lower().rpartition("@")
    if domain != settings.NEWSLETTER_BOUNCE_DOMAIN:
        return Inbound("unknown")
    base, _plus, token = local.partition("+")
    if base == "bounces":
        return Inbound("bounce", token)
    if base == "unsubscribe" and token:
        return Inbound("unsubscribe", token)
    if base in ("fbl", "abuse", "feedback") and not token:
        return Inbound("feedback")
    return Inbound("unknown")


# Unsubscribe -----------------------------------------------------------------------------

_UNSUB = re.compile(r"(\d{1,18})\.(\d{1,18})\.([a-z2-7]{16})")


def unsubscribe_token(subscriber_id: int, delivery_id: int = 0) -> str:
    """A token for the unsubscribe link and mailto address; it does not expire.

    People unsubscribe from messages months old, and RFC 8058 wants the link to work without
    a login; the delivery id tells which campaign it came from (0 for other mail).
    """
    value = f"{subscriber_id}.{delivery_id}"
    return f"{value}.{_tag('unsubscribe', value, 16)}"


def parse_unsubscribe_token(token: str) -> tuple[int, int] | None:
    match = _UNSUB.fullmatch(token.strip().lower())
    if not match:
        return None
    value = f"{match.group(1)}.{match.group(2)}"
    if not _check("unsubscribe", value, match.group(3), 16):
        return None
    return int(match.group(1)), int(match.group(2))


def unsubscribe_mailto(token: str) -> str:
    return f"unsubscribe+{token}@{settings.NEWSLETTER_BOUNCE_DOMAIN}"
