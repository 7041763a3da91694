"""The adapter to the co-op's mail relay: one connection reused for many messages.

Everything the panel sends by SMTP for newsletters (campaigns, confirmations, test sends)
goes through :class:`Relay`; the only exception it raises is :class:`SmtpError`, whose
``permanent`` says whether trying again can help (5xx: no; 4xx, timeouts, refused
connections: yes).
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import settings


class SmtpError(Exception):
    def __init__(self, message: str, *, permanent: bool, code: int = 0) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


@dataclass(frozen=True)
class RelayConfig:
    host: str
    port: int
    tls: str  # "", "starttls" or "ssl"
    user: str
    password: str
    timeout: float


def parse_url(url: str) -> RelayConfig:
    """smtp://[user:password@]host[:port][?starttls=1] or smtps://...; strict."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise SmtpError(
            f"NEWSLETTER_SMTP_URL={url!r}: use smtp://host:port or smtps://host:port",
            permanent=True,
        )
    query = parse_qs(parts.query)
    unknown = set(query) - {"starttls", "timeout"}
    if unknown:
        raise SmtpError(f"NEWSLETTER_SMTP_URL: unknown option {sorted(unknown)}", permanent=True)
    tls = "ssl" if parts.scheme == "smtps" else ""
    if query.get("starttls", ["0"])[0] in ("1", "true", "yes"):
        tls = "starttls"
    return RelayConfig(
        host=parts.hostname,
        port=parts.port or (465 if tls == "ssl" else 25),
        tls=tls,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        timeout=float(query.get("timeout", ["30"])[0]),
    )


def _response_text(response: bytes | str) -> str:
    text = response.decode("utf-8", "replace") if isinstance(response, bytes) else response
    return " ".join(text.split())[:250]


class Relay:
    """A connection to the relay, opened on first use and reopened after it drops."""

    def __init__(self, url: str | None = None) -> None:
        self.config = parse_url(url or settings.NEWSLETTER_SMTP_URL)
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        try:
            if c.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
            smtp.ehlo()
            if c.tls == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if c.user:
                smtp.login(c.user, c.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise SmtpError(
                f"relay refused the login: {exc.smtp_code} {_response_text(exc.smtp_error)}",
                permanent=True,
                code=exc.smtp_code,
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SmtpError(
                f"cannot reach the relay at {c.host}:{c.port}: {exc}", permanent=False
            ) from None
        # Many small writes per message (MAIL, RCPT, DATA); do not let Nagle delay them.
        if smtp.sock is not None:
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return smtp

    def send(self, *, sender: str, recipient: str, message: bytes) -> str:
        """Hand one message to the relay; returns its 250 reply text."""
        for attempt in (1, 2):
            if self._smtp is None:
                self._smtp = self._connect()
            try:
                return self._transaction(self._smtp, sender, recipient, message)
            except smtplib.SMTPResponseException as exc:
                # A reply outside the transaction's happy path (DATA not answered with 354).
                self._reset(self._smtp)
                raise self._error("SMTP", exc.smtp_code, exc.smtp_error) from None
            except smtplib.SMTPServerDisconnected:
                # The relay closes idle connections; one fresh connection may try again.
                self._drop()
                if attempt == 2:
                    raise SmtpError("the relay closed the connection", permanent=False) from None
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                raise SmtpError(f"relay connection failed: {exc}", permanent=False) from None
        raise AssertionError("unreachable")

    def _transaction(self, smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> str:
        code, text = smtp.mail(sender)
        if code != 250:
            self._reset(smtp)
            raise self._error("MAIL FROM", code, text)
        code, text = smtp.rcpt(recipient)
        if code not in (250, 251):
            self._reset(smtp)
            raise self._error("RCPT TO", code, text)
        code, text = smtp.data(data)
        if code != 250:
            raise self._error("DATA", code, text)
        return _response_text(text)

    @staticmethod
    def _reset(smtp: smtplib.SMTP) -> None:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.rset()

    @staticmethod
    def _error(stage: str, code: int, text: bytes | str) -> SmtpError:
        # 421 and 4xx: try later; 5xx: this message will never be accepted as it is.
        return SmtpError(
            f"{stage}: {code} {_response_text(text)}", permanent=500 <= code < 600, code=code
        )

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
