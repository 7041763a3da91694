"""Campaign messages: merge fields, MIME, the list headers and the DKIM signature.

A campaign goes to up to hundreds of thousands of people, one message each. Python's email
package needs about 2 ms to build one multipart message; the structure here is fixed, so it is
written directly (quoted-printable bodies through binascii), about 0.1 ms. The parts that come
from members (names, subjects, addresses) are validated before they get here and encoded
with the email package's own header encoder.
"""

from __future__ import annotations

import binascii
import html
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from newsletters import dkim, tokens
from newsletters.models import Campaign, MailingList
from newsletters.validation import InvalidInput

MERGE_FIELDS = ("name", "email", "unsubscribe_url", "list_name", "archive_url")
_MERGE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

# What the DKIM signature covers; RFC 8058 requires the two List-Unsubscribe headers in it.
SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
)


def check_merge_fields(text: str, what: str) -> None:
    """Refuse unknown merge fields, naming the line, so a typo is not mailed to everyone."""
    for number, line in enumerate(text.split("\n"), start=1):
        for match in _MERGE.finditer(line):
            if match.group(1) not in MERGE_FIELDS:
                raise InvalidInput(
                    _(
                        "%(what)s, line %(line)d: unknown merge field {{ %(field)s }}; "
                        "known: %(known)s"
                    )
                    % {
                        "what": what,
                        "line": number,
                        "field": match.group(1)[:40],
                        "known": ", ".join(MERGE_FIELDS),
                    }
                )


def _compile(text: str) -> list[str]:
    """Split into literal text at even indexes and field names at odd ones."""
    return _MERGE.split(text)


def _render(parts: list[str], values: dict[str, str]) -> str:
    out = list(parts)
    for index in range(1, len(out), 2):
        out[index] = values.get(out[index], "")
    return "".join(out)


def _qp(text: str) -> bytes:
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def _header(name: str, value: str) -> bytes:
    """One header, encoded (RFC 2047) when not ASCII and folded by the email package."""
    try:
        value.encode("ascii")
        line = f"{name}: {value}"
        if len(line) <= 998:
            return line.encode("ascii") + b"\r\n"
    except UnicodeEncodeError:
        pass
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def _address(name: str, address: str) -> str:
    return formataddr((name, address), charset="utf-8") if name else f"<{address}>"


@dataclass(frozen=True)
class Recipient:
    delivery_id: int  # 0 for a test send or confirmation (not a delivery)
    subscriber_id: int
    email: str
    name: str


class Composer:
    """Builds the messages of one campaign; made once per batch, used for many recipients."""

    def __init__(self, campaign: Campaign, mlist: MailingList) -> None:
        domain = mlist.domain
        self.campaign = campaign
        self.mlist = mlist
        self.domain = domain
        self.text_parts = _compile(campaign.text_body)
        self.html_parts = _compile(campaign.html_body) if campaign.html_body.strip() else None
        base = settings.PANEL_BASE_URL
        self.archive_url = f"{base}/newsletters/l/{mlist.slug}/archive/"
        self.unsubscribe_base = f"{base}/newsletters/u/"
        # Headers that are the same for every recipient, encoded once.
        self.fixed = b"".join(
            [
                _header("From", _address(mlist.from_name, mlist.from_address)),
                _header("Subject", campaign.subject),
                b"MIME-Version: 1.0\r\n",
                _header("List-Id", self._list_id()),
                _header(
                    "Feedback-ID", f"c{campaign.pk}:l{mlist.pk}:m{mlist.member_id}:commune-panel"
                ),
            ]
        )
        self.date = format_datetime(timezone.now())

    def _list_id(self) -> str:
        # RFC 2919: a phrase and a unique id that looks like a domain name.
        ident = f"{self.mlist.slug}.list-id.{settings.NEWSLETTER_BOUNCE_DOMAIN}"
        return formataddr((self.mlist.name, ident), charset="utf-8")

    def refresh_date(self, now: datetime | None = None) -> None:
        self.date = format_datetime(now or timezone.now())

    def build(self, recipient: Recipient, *, message_id: str | None = None) -> bytes:
        token = tokens.unsubscribe_token(recipient.subscriber_id, recipient.delivery_id)
        unsubscribe_url = f"{self.unsubscribe_base}{token}/"
        values = {
            "name": recipient.name,
            "email": recipient.email,
            "unsubscribe_url": unsubscribe_url,
            "list_name": self.mlist.name,
            "archive_url": self.archive_url,
        }
        msgid = message_id or (
            tokens.message_id(recipient.delivery_id)
            if recipient.delivery_id
            else f"t{secrets.token_hex(8)}@{settings.NEWSLETTER_BOUNCE_DOMAIN}"
        )
        text = _qp(_render(self.text_parts, values))
        headers = [
            self.fixed,
            _header("To", _address(recipient.name, recipient.email)),
            f"Date: {self.date}\r\nMessage-ID: <{msgid}>\r\n".encode("ascii"),
            b"List-Unsubscribe: <" + unsubscribe_url.encode("ascii") + b">,\r\n <mailto:",
            tokens.unsubscribe_mailto(token).encode("ascii") + b"?subject=unsubscribe>\r\n",
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        ]
        if self.html_parts is None:
            headers.append(
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: quoted-printable\r\n"
            )
            body = text
        else:
            escaped = {key: html.escape(value) for key, value in values.items()}
            page = _qp(_render(self.html_parts, escaped))
            boundary = f"=_nl{self.campaign.pk}_{secrets.token_hex(6)}".encode("ascii")
            headers.append(b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n')
            body = b"".join(
                [
                    b"--" + boundary + b"\r\n",
                    b"Content-Type: text/plain; charset=utf-8\r\n",
                    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
                    text,
                    b"\r\n--" + boundary + b"\r\n",
                    b"Content-Type: text/html; charset=utf-8\r\n",
                    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
                    page,
                    b"\r\n--" + boundary + b"--\r\n",
                ]
            )
        message = b"".join(headers) + b"\r\n" + body
        signature = dkim.sign(
            message,
            domain=self.domain.name,
            selector=self.domain.dkim_selector,
            private_pem=self.domain.dkim_private_key,
            headers=SIGNED_HEADERS,
        )
        return signature + message

    def preview(
        self, recipient: Recipient, *, unsubscribe_url: str | None = None
    ) -> tuple[str, str]:
        """The text and HTML a recipient would see (for the preview page and the archive)."""
        token = tokens.unsubscribe_token(recipient.subscriber_id, recipient.delivery_id)
        values = {
            "name": recipient.name,
            "email": recipient.email,
            "unsubscribe_url": f"{self.unsubscribe_base}{token}/"
            if unsubscribe_url is None
            else unsubscribe_url,
            "list_name": self.mlist.name,
            "archive_url": self.archive_url,
        }
        text = _render(self.text_parts, values)
        escaped = {key: html.escape(value) for key, value in values.items()}
        page = _render(self.html_parts, escaped) if self.html_parts is not None else ""
        return text, page


def single_message(
    mlist: MailingList, *, to: str, subject: str, text: str, page: str, message_id: str
) -> bytes:
    """A one-off message from a list (a confirmation request): text and HTML, DKIM-signed."""
    boundary = f"=_nl_{message_id.split('@')[0]}".encode("ascii")
    body = b"".join(
        [
            b"--" + boundary + b"\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(text),
            b"\r\n--" + boundary + b"\r\n",
            b"Content-Type: text/html; charset=utf-8\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(page),
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )
    message = (
        b"".join(
            [
                _header("From", _address(mlist.from_name, mlist.from_address)),
                _header("To", f"<{to}>"),
                _header("Subject", subject),
                f"Date: {format_datetime(timezone.now())}\r\n".encode("ascii"),
                f"Message-ID: <{message_id}>\r\n".encode("ascii"),
                b"MIME-Version: 1.0\r\n",
                b"Auto-Submitted: auto-generated\r\n",
                b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n',
            ]
        )
        + b"\r\n"
        + body
    )
    domain = mlist.domain
    signature = dkim.sign(
        message,
        domain=domain.name,
        selector=domain.dkim_selector,
        private_pem=domain.dkim_private_key,
        headers=("from", "to", "subject", "date", "message-id", "mime-version", "content-type"),
    )
    return signature + message
