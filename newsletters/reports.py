"""Read bounces (delivery status notifications) and complaints (abuse feedback reports).

parse_report() turns the raw bytes that arrive at the bounce domain into a Report: what kind of
report it is, who sent it, and one Finding per affected recipient. It decides nothing about
subscribers; the caller maps findings to deliveries (by Message-ID or VERP) and acts on them.

Where the verdicts come from, in order of authority:

1. An ARF feedback report (RFC 5965, ``message/feedback-report``) is a complaint, unless its
   Feedback-Type says otherwise (``not-spam``, ``auth-failure``, ...). Microsoft's JMRP sends
   complaints as a plain attached copy of the message rather than ARF; that form is read too.
2. For bounces, each per-recipient block of a ``message/delivery-status`` part (RFC 3464) is
   read directly. Its Status class decides: 5.x.x is hard, 4.x.x is soft, whatever the Action
   says, because providers report a temporary condition they stopped retrying as "Action:
   failed" with a 4.x.x status (Gmail's "Recipient inbox full" is "failed", "4.2.2"). An Action
   of "delayed" is always soft, since the MTA is still retrying. Without a usable Status, Action
   "failed" is hard and "delayed" soft; "delivered", "relayed" and "expanded" are no failure.
3. flufl.bounce supplies the addresses the delivery-status blocks do not cover: its heuristic
   detectors read formats without a delivery-status part (Exim's plain-text bounce with
   X-Failed-Recipients, old Postfix, Exchange, ...). Its temporary set is soft, its permanent set
   hard. Where a block covers the same address, the block wins.
"""

from __future__ import annotations

import base64
import binascii
import logging
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import errors
from email.message import Message
from email.parser import BytesParser, HeaderParser, Parser
from email.policy import compat32
from email.utils import getaddresses
from typing import Literal

from flufl.bounce import all_failures

logger = logging.getLogger(__name__)

Kind = Literal["hard", "soft", "complaint"]
ReportType = Literal["dsn", "arf", "unknown"]

DETAIL_MAX = 300

# RFC 5965 and RFC 6430; "not-spam" and "auth-failure" (RFC 6591) are not complaints.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

# Parts that carry the returned original message, whole or headers only (RFC 6533 adds the
# "global" forms for SMTPUTF8 mail; "message/rfc822-headers" is a common misspelling).
_ORIGINAL_TYPES = (
    "message/rfc822",
    "message/global",
    "text/rfc822-headers",
    "message/rfc822-headers",
    "message/global-headers",
)

# Plain-text bounces quote the original after one of these lines.
_COPY_MARKERS = (
    "------ This is a copy of the message, including all the headers. ------",
    "------ This is a copy of the message's headers. ------",
    "------ The body of the message is",
    "----- Original message -----",
    "----- Message header follows -----",
    "--- Below this line is a copy of the message.",
    "Original message headers:",
)

_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})")
_MESSAGE_ID_LINE = re.compile(r"^message-id:[ \t]*(?:\n[ \t]+)?(\S+)", re.IGNORECASE | re.MULTILINE)
_ANGLE = re.compile(r"<([^<>]+)>")
_EXIM_LOCAL = re.compile(r"with local \(exim", re.IGNORECASE)
# RFC 6590 redaction: a placeholder word, or the local part masked out.
_REDACTED = re.compile(r"redacted|^(?:\*+|x{5,})@", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    kind: Kind
    address: str  # the original recipient, lower-cased; "" when the reporter redacted it
    message_id: str  # Message-ID of the original message without angle brackets; "" if none
    detail: str  # e.g. "5.1.1 smtp; 550 5.1.1 user unknown" or "abuse"; one line, <= 300 chars


@dataclass(frozen=True)
class Report:
    type: ReportType
    reporter: str  # "postfix", "exim", "gmail", "microsoft", "yahoo", "aol", or "" when unknown
    findings: tuple[Finding, ...]


class ReportError(Exception):
    """The input is not an email message at all.

    Retrying cannot turn such input into a report, so the caller should drop it rather than
    requeue it; `permanent` says so for code that handles several error types alike.
    """

    permanent: bool = True


_UNKNOWN = Report(type="unknown", reporter="", findings=())


def parse_report(raw: bytes) -> Report:
    """Read a bounce or complaint from its raw bytes.

    Anything that parses as an email but is not a report (an auto-reply, a person writing to
    the bounce address, broken MIME) is Report(type="unknown"); only input with no header
    fields at all raises ReportError, because the mail pipeline must not stall on odd mail.
    """
    # Line endings differ between SMTP (CRLF) and mail stores (LF); one form keeps the
    # results identical and keeps stray CRs out of header values and details.
    data = bytes(raw).replace(b"\r\n", b"\n")
    if not data.strip():
        raise ReportError("empty input")
    try:
        msg = BytesParser(policy=compat32).parsebytes(data)
    except RecursionError:
        # The stdlib parser recurses once per nested multipart; mail nested that deep is
        # broken or hostile, and still mail.
        logger.warning("a report nested too deeply to parse; treating it as unknown")
        return _UNKNOWN
    if not msg.keys():
        raise ReportError("not an email message: no header fields")
    try:
        return _classify(msg)
    except Exception:
        # The stdlib parser accepts anything, so what reaches here is a Message; a failure
        # past this point is a shape this module did not foresee, not a reason to requeue.
        logger.exception("could not read a report; treating it as unknown")
        return _UNKNOWN


def _classify(msg: Message) -> Report:
    feedback = _first_part(msg, "message/feedback-report")
    if feedback is not None:
        return _arf_report(msg, feedback)
    jmrp = _jmrp_original(msg)
    if jmrp is not None:
        return _jmrp_report(msg, jmrp)
    return _dsn_report(msg) or _UNKNOWN


# ARF ------------------------------------------------------------------------------------


def _arf_report(msg: Message, part: Message) -> Report:
    fields = _fields(part)
    # A report without a Feedback-Type is malformed; reading it as a complaint errs on the
    # side of not mailing someone who pressed "spam".
    feedback_type = _one_line(_header(fields, "Feedback-Type")).lower() or "abuse"
    reporter = _reporter(msg, fields=[fields])
    if feedback_type not in COMPLAINT_TYPES:
        return Report(type="arf", reporter=reporter, findings=())
    original = _original(msg)
    address = _field_address(_header(fields, "Original-Rcpt-To"))
    if not address and original is not None:
        address = _sole_recipient(original)
    finding = Finding(
        kind="complaint",
        address=address,
        message_id=_original_message_id(msg, original),
        detail=_one_line(feedback_type),
    )
    return Report(type="arf", reporter=reporter, findings=(finding,))


def _jmrp_original(msg: Message) -> Message | None:
    """The attached original of a Microsoft JMRP complaint, or None if this is not one.

    JMRP's preferred delivery is not ARF but the reported message attached as message/rfc822,
    from staff@hotmail.com, with X-HmXmrOriginalRecipient added to the attached copy.
    """
    sender = _header(msg, "From").lower()
    if not any(domain in sender for domain in ("@hotmail.com", "@outlook.com", "microsoft.com")):
        return None
    for part in _own_parts(msg):
        if part.get_content_type() != "message/rfc822":
            continue
        inner = _attached(part)
        if inner is not None and inner.get("X-HmXmrOriginalRecipient") is not None:
            return inner
    return None


def _jmrp_report(msg: Message, original: Message) -> Report:
    address = _field_address(_header(original, "X-HmXmrOriginalRecipient"))
    finding = Finding(
        kind="complaint",
        address=address or _sole_recipient(original),
        message_id=_clean_message_id(_header(original, "Message-ID")),
        detail="abuse",
    )
    return Report(type="arf", reporter="microsoft", findings=(finding,))


# DSN ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipient:
    """One per-recipient block of a message/delivery-status part."""

    addresses: tuple[str, ...]  # Original-Recipient first: it is the address the panel sent to
    action: str
    status: str  # the enhanced status code alone, e.g. "5.1.1"; "" when absent or unusable
    diagnostic: str

    @property
    def kind(self) -> Kind | None:
        action = self.action.lower()
        if action.startswith(("delivered", "relayed", "expanded")):
            return None
        if action.startswith("delayed"):
            return "soft"
        if self.status.startswith("5"):
            return "hard"
        if self.status.startswith("4"):
            return "soft"
        if self.status.startswith("2"):
            return None
        # opensmtpd writes the non-standard "Action: error".
        if action.startswith(("fail", "error")):
            return "hard"
        return None

    @property
    def detail(self) -> str:
        return _one_line(" ".join(p for p in (self.status or self.action, self.diagnostic) if p))


def _dsn_report(msg: Message) -> Report | None:
    status_parts = [p for p in _own_parts(msg) if p.get_content_type() == "message/delivery-status"]
    blocks: list[Message] = []
    for part in status_parts:
        blocks.extend(_status_blocks(part))
    recipients = [r for r in (_recipient(b) for b in blocks) if r is not None]
    temporary, permanent = _flufl_failures(msg)

    # An address may appear in several blocks (or parts); the most severe verdict stands.
    verdicts: dict[str, tuple[Kind, str]] = {}
    covered: set[str] = set()
    for rcpt in recipients:
        covered.update(rcpt.addresses)
        kind = rcpt.kind
        if kind is None:
            continue
        address = rcpt.addresses[0]
        if address not in verdicts or (kind == "hard" and verdicts[address][0] == "soft"):
            verdicts[address] = (kind, rcpt.detail)
    for address in sorted(permanent - covered):
        verdicts[address] = ("hard", _text_detail(msg, address))
    for address in sorted(temporary - permanent - covered):
        verdicts[address] = ("soft", _text_detail(msg, address))

    report_type = _param(msg, "report-type").lower()
    is_dsn = bool(status_parts) or bool(verdicts) or report_type == "delivery-status"
    if not is_dsn:
        return None
    message_id = _original_message_id(msg, _original(msg)) if verdicts else ""
    if verdicts and not message_id:
        message_id = _fallback_message_id(msg, blocks)
    findings = tuple(
        Finding(kind=kind, address=address, message_id=message_id, detail=detail)
        for address, (kind, detail) in verdicts.items()
    )
    return Report(type="dsn", reporter=_reporter(msg, fields=blocks), findings=findings)


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list) and not _is_encoded(part):
        return [block for block in payload if isinstance(block, Message)]
    # The part as text: encoded (RFC 3464 asks for 7bit, not every MTA obliges), or left
    # unparsed (no blank line after its header, or built in code).
    text = _body_bytes(part).decode("utf-8", "replace").replace("\r\n", "\n")
    chunks = re.split(r"\n[ \t]*\n", text)
    parser = HeaderParser(policy=compat32)
    return [parser.parsestr(chunk.strip("\n") + "\n") for chunk in chunks if chunk.strip()]


def _recipient(block: Message) -> _Recipient | None:
    addresses: list[str] = []
    for name in ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient"):
        address = _field_address(_header(block, name))
        if address and address not in addresses:
            addresses.append(address)
    if not addresses:
        return None
    match = _STATUS.match(_header(block, "Status"))
    return _Recipient(
        addresses=tuple(addresses),
        action=_one_line(_header(block, "Action")),
        status=".".join(match.groups()) if match else "",
        diagnostic=_one_line(_header(block, "Diagnostic-Code")),
    )


def _flufl_failures(msg: Message) -> tuple[set[str], set[str]]:
    """flufl.bounce's (temporary, permanent) addresses, lower-cased.

    flufl.bounce 6.0 assumes header values are str. For a field with raw 8-bit bytes (UTF-8
    headers are legal since RFC 6532) compat32 returns an email.header.Header instead, a
    detector calls .lower() on it, and all_failures() raises, losing every detector's answer.
    Parsed again from text, the same message has str values throughout.
    """
    try:
        temporary, permanent = all_failures(msg)
    except Exception:
        try:
            text = msg.as_bytes().decode("utf-8", "replace")
            temporary, permanent = all_failures(Parser(policy=compat32).parsestr(text))
        except Exception:
            # The delivery-status verdicts do not depend on flufl; keep them.
            logger.exception("flufl.bounce failed on a report")
            return set(), set()
    return _addresses(temporary), _addresses(permanent)


def _addresses(values: frozenset[bytes]) -> set[str]:
    found = set()
    for value in values:
        address = _clean_address(value.decode("ascii", "replace"))
        if address:
            found.add(address)
    return found


def _text_detail(msg: Message, address: str) -> str:
    """What a plain-text bounce says about an address, for bounces without delivery-status.

    Postfix writes "<addr>: host ... said: 550 ..." with indented continuation lines, Exim
    the address alone on a line and the error indented below it; both are "the line naming
    the address, then the lines indented deeper than it".
    """
    for part in _own_parts(msg):
        if part.get_content_type() != "text/plain":
            continue
        lines = _before_copy(_decoded_text(part)).splitlines()
        for index, line in enumerate(lines):
            if address not in line.lower():
                continue
            indent = len(line) - len(line.lstrip())
            pieces = [] if line.strip().strip("<>:").lower() == address else [line.strip()]
            for following in lines[index + 1 :]:
                if not following.strip() or len(following) - len(following.lstrip()) <= indent:
                    break
                pieces.append(following.strip())
            if pieces:
                return _one_line(" ".join(pieces))
    return ""


def _before_copy(text: str) -> str:
    for marker in _COPY_MARKERS:
        text = text.split(marker, 1)[0]
    return text


def _fallback_message_id(msg: Message, blocks: list[Message]) -> str:
    """The original's Message-ID from the report's own metadata, when no copy came back.

    Gmail names it in the delivery-status (X-Original-Message-ID); Gmail and Exchange also
    thread their bounces to the original with In-Reply-To.
    """
    for block in blocks:
        value = _clean_message_id(_header(block, "X-Original-Message-ID"))
        if value:
            return value
    return _clean_message_id(_header(msg, "In-Reply-To"))


# The returned original ----------------------------------------------------------------------


def _original(msg: Message) -> Message | None:
    """The header fields of the returned original message, if the report carries it as a part."""
    for part in _own_parts(msg):
        content_type = part.get_content_type()
        if content_type not in _ORIGINAL_TYPES:
            continue
        if content_type in ("message/rfc822", "message/global"):
            inner = _attached(part)
            if inner is not None:
                return inner
            continue
        return HeaderParser(policy=compat32).parsestr(_decoded_text(part).lstrip("\n"))
    return None


def _attached(part: Message) -> Message | None:
    """The message inside a message/* part (message/rfc822, message/feedback-report)."""
    payload = part.get_payload()
    if not (isinstance(payload, list) and payload and isinstance(payload[0], Message)):
        return None
    if _is_encoded(part):
        return BytesParser(policy=compat32).parsebytes(_body_bytes(part).replace(b"\r\n", b"\n"))
    return payload[0]


def _original_message_id(msg: Message, original: Message | None) -> str:
    if original is not None:
        value = _clean_message_id(_header(original, "Message-ID"))
        if value:
            return value
    # Plain-text reports quote the original in their body (Exim, old Gmail, Exchange's text).
    for part in _own_parts(msg):
        if part.get_content_type() != "text/plain":
            continue
        text = _decoded_text(part)
        for marker in _COPY_MARKERS:
            if marker in text:
                quoted = text.split(marker, 1)[1].lstrip("\n")
                headers = HeaderParser(policy=compat32).parsestr(quoted)
                value = _clean_message_id(_header(headers, "Message-ID"))
                if value:
                    return value
        match = _MESSAGE_ID_LINE.search(text)
        if match:
            value = _clean_message_id(match.group(1))
            if value:
                return value
    return ""


# Reporter -----------------------------------------------------------------------------------


def _reporter(msg: Message, *, fields: list[Message]) -> str:
    """Who generated the report, from its own headers and machine-readable fields.

    Only the report's outer header fields count: its Received chain ends at our own MX (often
    Postfix) and the returned original carries the headers of whoever sent that.
    """
    sender = _header(msg, "From").lower()
    agents = " ".join(_header(f, "User-Agent") for f in fields).lower()
    mtas = " ".join(_header(f, "Reporting-MTA") for f in fields).lower()
    names = {name.lower() for name in msg}
    postfix_fields = any(
        f.get("X-Postfix-Queue-ID") is not None or f.get("X-Postfix-Sender") is not None
        for f in fields
    )
    text = " ".join(
        _decoded_text(p)[:4000] for p in _own_parts(msg) if p.get_content_type() == "text/plain"
    )
    if "yahoo" in sender or "yahoo" in agents or "yahoo" in mtas:
        return "yahoo"
    if "@aol." in sender or "aol" in agents or ".aol.com" in mtas:
        return "aol"
    if "googlemail.com" in sender or "@google.com" in sender or "google" in mtas:
        return "gmail"
    microsoft_mta = any(d in mtas for d in ("outlook.com", "exchangelabs.com", "hotmail.com"))
    microsoft_sender = any(
        d in sender for d in ("@hotmail.com", "@outlook.com", "microsoft.com", "microsoftexchange")
    )
    if microsoft_mta or microsoft_sender or "x-ms-exchange-message-is-ndr" in names:
        return "microsoft"
    if "this message was created automatically by mail delivery software" in text.lower():
        return "exim"
    # Postfix 2.3 and later say "the mail system", older ones "the Postfix program".
    postfix_text = any(
        phrase in text for phrase in ("This is the mail system at host", "The Postfix program")
    )
    if postfix_fields or postfix_text or "postfix" in mtas:
        return "postfix"
    # Exim names itself in the Received field it adds to a bounce it generates locally.
    received = " ".join(str(value) for value in msg.get_all("Received", []))
    if "x-failed-recipients" in names and _EXIM_LOCAL.search(received):
        return "exim"
    if any(name.startswith("x-ms-exchange-") for name in names):
        return "microsoft"
    return ""


# Helpers ------------------------------------------------------------------------------------


def _own_parts(msg: Message) -> Iterator[Message]:
    """The report's parts in order, not descending into attached messages (the original).

    A stack rather than recursion: the depth of the nesting is the sender's choice.
    """
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        payload = part.get_payload() if part.get_content_maintype() == "multipart" else None
        if isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _first_part(msg: Message, content_type: str) -> Message | None:
    return next((p for p in _own_parts(msg) if p.get_content_type() == content_type), None)


def _fields(part: Message) -> Message:
    """The header block of a message/feedback-report part."""
    inner = _attached(part)
    if inner is not None:
        return inner
    return HeaderParser(policy=compat32).parsestr(_decoded_text(part).lstrip("\n"))


def _is_encoded(part: Message) -> bool:
    return _header(part, "Content-Transfer-Encoding").strip().lower() in (
        "base64",
        "quoted-printable",
    )


def _body_bytes(part: Message) -> bytes:
    """The decoded body of a part, message/* ones included.

    The parser reads the body of every message/* part as nested header blocks, even when it
    is base64 or quoted-printable text; serialising the blocks gives that text back.
    """
    payload = part.get_payload()
    if isinstance(payload, list):
        # The parser ate the blank lines between the blocks; put them back.
        encoded = "\n".join(_block_text(block) for block in payload if isinstance(block, Message))
    else:
        encoded = payload if isinstance(payload, str) else ""
    raw = encoded.encode("utf-8", "surrogateescape")
    cte = _header(part, "Content-Transfer-Encoding").strip().lower()
    if cte == "base64":
        try:
            return base64.b64decode(b"".join(raw.split()))
        except (binascii.Error, ValueError):
            return b""
    if cte == "quoted-printable":
        return quopri.decodestring(raw)
    return raw


def _block_text(block: Message) -> str:
    """A parsed header block as the text it was parsed from (near enough to decode it)."""
    headers = "".join(f"{name}: {value}\n" for name, value in block.raw_items())
    body = _payload_text(block)
    if not body:
        return headers
    # A line that is not a header ends the headers without a blank line: the parser notes
    # that as a defect, and the encoded text (a QP soft break, base64) runs on from there.
    joined = any(isinstance(d, errors.MissingHeaderBodySeparatorDefect) for d in block.defects)
    return headers + ("" if joined or not headers else "\n") + body


def _payload_text(msg: Message) -> str:
    payload = msg.get_payload()
    return payload if isinstance(payload, str) else ""


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return _payload_text(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace").replace("\r\n", "\n")
    except LookupError:
        return payload.decode("utf-8", errors="replace").replace("\r\n", "\n")


def _header(msg: Message, name: str) -> str:
    # compat32 hands back an email.header.Header for values with undecodable 8-bit bytes.
    value = msg.get(name)
    return "" if value is None else str(value)


def _param(msg: Message, name: str) -> str:
    value = msg.get_param(name)
    return value if isinstance(value, str) else ""


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:DETAIL_MAX]


def _clean_address(value: str) -> str:
    address = "".join(value.split()).strip("<>").lower()
    if "@" not in address or _REDACTED.search(address):
        return ""
    return address


def _field_address(value: str) -> str:
    """The address of a DSN or ARF address field: "rfc822; user@example.net" or "<user@...>"."""
    _type, _semi, address = value.rpartition(";")
    return _clean_address(address)


def _sole_recipient(headers: Message) -> str:
    """The original's To address, when it names exactly one; a list makes it ambiguous."""
    pairs = getaddresses([_header(headers, "To")])
    addresses = [address for _name, address in pairs if address]
    return _clean_address(addresses[0]) if len(addresses) == 1 else ""


def _clean_message_id(value: str) -> str:
    match = _ANGLE.search(value)
    found = match.group(1) if match else value
    return "".join(found.split()).strip("<>")
