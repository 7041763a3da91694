"""Read bounces (delivery status notifications) and complaints (abuse feedback reports).

parse_report() turns the raw bytes that arrive at the bounce domain into a Report: what kind of
report it is, who sent it, and one Finding per affected recipient. It decides nothing about
subscribers; the caller maps findings to deliveries (by Message-ID or VERP) and acts on them.

Where the verdicts come from, in order of authority:

1. An ARF feedback report (RFC 5965, ``message/feedback-report``) is a complaint, unless its
   Feedback-Type says otherwise (``not-spam``, ``auth-failure``, ...). Microsoft's JMRP sends
   complaints as a plain attached copy of the message rather than ARF; that form is read too.
2. For bounces, each per-recipient block of a ``message/delivery-status`` part (RFC 3464, and
   RFC 6533's ``message/global-delivery-status``) is read directly. Its Action decides first:
   "failed" is hard whatever the Status class, because the MTA has given the message up for
   good (Office 365's "4.4.7 QUEUE.Expired", Postfix's expired "4.4.1", Gmail's "inbox full"
   4.2.2 are all final); "delayed" is soft, since the MTA is still retrying; "delivered",
   "relayed" and "expanded" are no failure. Without an Action, the Status class decides:
   5.x.x is hard, 4.x.x soft.
3. flufl.bounce supplies the addresses the delivery-status blocks do not cover: its heuristic
   detectors read formats without a delivery-status part (Exim's plain-text bounce with
   X-Failed-Recipients, old Postfix, Exchange, ...). Its temporary set is soft, its permanent set
   hard. Where a block covers the same address, the block wins.

The returned original, whole (``message/rfc822``), as a header block (``text/rfc822-headers``,
``message/rfc822-headers``, ``message/global-headers``) or quoted in the text, gives each
finding the original's Message-ID, return path (the VERP address) and Feedback-ID. A report
forwarded as an attachment (a helpdesk or an abuse desk passing it on) is read from the
attachment, so these come from the original and not from the forward.

Only what these steps read is parsed: essentials() cuts a message down to its header fields,
its report parts and the beginnings of its text parts before the email package sees it, so a
returned original with megabytes of attachments costs little more than a small report.
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
from email.parser import BytesHeaderParser, BytesParser, HeaderParser, Parser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, Literal

from flufl.bounce import all_failures

_FLUFL_DETECTORS: list[Any] | None
try:
    # all_failures()'s own list, to run each detector on its own (see _flufl_failures).
    from flufl.bounce._scan import _DETECTORS

    _FLUFL_DETECTORS = list(_DETECTORS)
except ImportError:  # a flufl.bounce that keeps them elsewhere: all_failures() as a whole
    _FLUFL_DETECTORS = None

logger = logging.getLogger(__name__)
# flufl.bounce logs a line per detector per message at INFO: seventeen lines for every report.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)

Kind = Literal["hard", "soft", "complaint"]
ReportType = Literal["dsn", "arf", "unknown"]

DETAIL_MAX = 300

# RFC 5965 and RFC 6430; "not-spam" and "auth-failure" (RFC 6591) are not complaints.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

# Parts that carry the returned original message, whole or headers only (RFC 6533 adds the
# "global" forms for SMTPUTF8 mail; "message/rfc822-headers" is a common misspelling).
_WHOLE_TYPES = ("message/rfc822", "message/global")
_HEADER_TYPES = ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers")
_ORIGINAL_TYPES = _WHOLE_TYPES + _HEADER_TYPES
# The machine-readable part of a DSN; RFC 6533's form allows UTF-8 in it.
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
# How far a report forwarded as an attachment (of a forward, ...) is followed.
_FORWARD_DEPTH = 3

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
# RFC 6590 redaction: the local part replaced by a placeholder word or masked out. Only the
# whole local part counts: "unredacted.fan@" is somebody's address. A finding keeps such an
# address out (it cannot be checked against a subscriber) but is never dropped for it: the
# VERP address or the Message-ID still says whose report it is.
_REDACTED = re.compile(r"(?:\[?redacted\]?|\*+|x{3,})@.*", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Finding:
    kind: Kind
    address: str  # the original recipient, lower-cased; "" when the reporter redacted it
    message_id: str  # Message-ID of the original message without angle brackets; "" if none
    detail: str  # e.g. "5.1.1 smtp; 550 5.1.1 user unknown" or "abuse"; one line, <= 300 chars
    # The original's envelope sender (a VERP address when it was ours), lower-cased; "" if the
    # report does not say. From ARF's Original-Mail-From, Postfix's X-Postfix-Sender or the
    # original's Return-Path.
    verp: str = ""
    feedback_id: str = ""  # the original's Feedback-ID field, one line; "" if none


@dataclass(frozen=True)
class Report:
    type: ReportType
    # "postfix", "exim", "sendmail", "qmail", "gmail", "microsoft", "yahoo", "aol", or ""
    reporter: str
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
    data = essentials(raw)
    if not data.strip():
        raise ReportError("empty input")
    try:
        msg = BytesParser(policy=compat32).parsebytes(data)
    except RecursionError:
        # essentials() keeps the nesting within bounds; kept as the last line of defence,
        # since mail nested that deep is broken or hostile, and still mail.
        logger.warning("a report nested too deeply to parse; treating it as unknown")
        return _UNKNOWN
    if not msg.keys():
        raise ReportError("not an email message: no header fields")
    try:
        return _classify(msg, depth=0)
    except Exception:
        # The stdlib parser accepts anything, so what reaches here is a Message; a failure
        # past this point is a shape this module did not foresee, not a reason to requeue.
        logger.exception("could not read a report; treating it as unknown")
        return _UNKNOWN


def _classify(msg: Message, *, depth: int) -> Report:
    feedback = _first_part(msg, "message/feedback-report")
    if feedback is not None:
        return _arf_report(msg, feedback)
    if not any(p.get_content_type() in _STATUS_TYPES for p in _own_parts(msg)):
        forwarded = _forwarded_report(msg, depth=depth)
        if forwarded is not None:
            return forwarded
    jmrp = _jmrp_original(msg)
    if jmrp is not None:
        return _jmrp_report(msg, jmrp)
    return _dsn_report(msg) or _UNKNOWN


def _forwarded_report(msg: Message, *, depth: int) -> Report | None:
    """The report inside an attached message, for a report forwarded as an attachment.

    Read from the attachment, its findings carry the returned original's Message-ID; read from
    the outside, the first attached message would be the report itself and its Message-ID the
    report's (or the forwarder's).
    """
    if depth >= _FORWARD_DEPTH:
        return None
    for part in _own_parts(msg):
        if part is msg or part.get_content_type() not in _WHOLE_TYPES:
            continue
        inner = _attached(part)
        if inner is None:
            continue
        report = _classify(inner, depth=depth + 1)
        if report.findings or report.type == "arf":
            return report
    return None


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
        address=_unmasked(address),
        message_id=_original_message_id(msg, original),
        detail=_one_line(feedback_type),
        verp=_field_address(_header(fields, "Original-Mail-From")) or _return_path(original),
        feedback_id=_feedback_id(original),
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
        address=_unmasked(address or _sole_recipient(original)),
        message_id=_clean_message_id(_header(original, "Message-ID")),
        detail="abuse",
        verp=_return_path(original),
        feedback_id=_feedback_id(original),
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
        # "failed" is final: the MTA gave the message up, also when the cause was temporary
        # (4.4.7 expired in the queue). opensmtpd writes the non-standard "Action: error".
        if action.startswith(("fail", "error")):
            return "hard"
        if self.status.startswith("5"):
            return "hard"
        if self.status.startswith("4"):
            return "soft"
        return None

    @property
    def detail(self) -> str:
        return _one_line(" ".join(p for p in (self.status or self.action, self.diagnostic) if p))


def _dsn_report(msg: Message) -> Report | None:
    status_parts = [p for p in _own_parts(msg) if p.get_content_type() in _STATUS_TYPES]
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
    original = _original(msg) if verdicts else None
    if original is None and verdicts:
        original = _quoted_original(msg)
    message_id = _original_message_id(msg, original) if verdicts else ""
    if verdicts and not message_id:
        message_id = _fallback_message_id(msg, blocks)
    verp = ""
    for block in blocks:
        # Postfix names the original's envelope sender in its per-message fields.
        verp = verp or _field_address(_header(block, "X-Postfix-Sender"))
    verp = verp or _return_path(original)
    feedback_id = _feedback_id(original)
    findings = tuple(
        Finding(
            kind=kind,
            address=_unmasked(address),
            message_id=message_id,
            detail=detail,
            verp=verp,
            feedback_id=feedback_id,
        )
        for address, (kind, detail) in verdicts.items()
    )
    return Report(type="dsn", reporter=_reporter(msg, fields=blocks), findings=findings)


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    # The stdlib splits only message/delivery-status into its blocks; it reads the global
    # form as one message whose body holds the per-recipient blocks, so that one goes as text.
    plain = part.get_content_type() == "message/delivery-status" and not _is_encoded(part)
    if isinstance(payload, list) and plain:
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

    Its detectors run here one by one, in all_failures()'s order and by its rule (the first
    that finds an address ends the run), because all_failures() gives up at the first
    detector that raises, losing every answer, and odd mail makes some raise: flufl.bounce
    6.0 assumes header values are str, and for a field with raw 8-bit bytes (UTF-8 headers are
    legal since RFC 6532) compat32 returns an email.header.Header, on which a detector calls
    .lower(); the Yale detector takes the first of the From field's addresses, and there may
    be none. A detector that raises is tried again on the message parsed from text (str
    values throughout), then skipped.
    """
    if _FLUFL_DETECTORS is None:
        try:
            temporary, permanent = all_failures(msg)
        except Exception as exc:
            logger.info("flufl.bounce failed on a report (%s)", type(exc).__name__)
            return set(), set()
        return _addresses(temporary), _addresses(permanent)
    as_text: Message | None = None
    for detector in _FLUFL_DETECTORS:
        try:
            temporary, permanent = detector().process(msg)
        except Exception:
            if as_text is None:
                text = msg.as_bytes().decode("utf-8", "replace")
                as_text = Parser(policy=compat32).parsestr(text)
            try:
                temporary, permanent = detector().process(as_text)
            except Exception as exc:
                # The delivery-status verdicts do not depend on flufl; the other detectors
                # may still answer.
                logger.info("flufl.bounce %s failed (%s)", detector.__name__, type(exc).__name__)
                continue
        if temporary or permanent:
            return _addresses(frozenset(temporary)), _addresses(frozenset(permanent))
    return set(), set()


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
    the address, then the lines indented deeper than it". qmail (QSBMF) and Yahoo write
    "<addr>:" alone and the error on the lines below it, not indented, up to a blank line.
    """
    for part in _own_parts(msg):
        if part.get_content_type() != "text/plain":
            continue
        lines = _before_copy(_decoded_text(part)).splitlines()
        for index, line in enumerate(lines):
            if address not in line.lower():
                continue
            indent = len(line) - len(line.lstrip())
            alone = line.strip().strip("<>:").lower() == address
            pieces = [] if alone else [line.strip()]
            following_lines = lines[index + 1 :]
            for following in following_lines:
                if not following.strip() or len(following) - len(following.lstrip()) <= indent:
                    break
                pieces.append(following.strip())
            if not pieces and alone and line.strip().endswith(":"):
                for following in following_lines[:5]:
                    if not following.strip():
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
    """The header fields of the returned original message, if the report carries it as a part.

    The stdlib parses every message/* part into a sub-message, the header-only forms
    (message/rfc822-headers, message/global-headers) included; only text/rfc822-headers
    stays text.
    """
    for part in _own_parts(msg):
        content_type = part.get_content_type()
        if content_type not in _ORIGINAL_TYPES:
            continue
        if isinstance(part.get_payload(), list):
            inner = _attached(part)
            if inner is not None:
                return inner
            continue
        if content_type in _WHOLE_TYPES:
            continue
        return HeaderParser(policy=compat32).parsestr(_decoded_text(part).lstrip("\n"))
    return None


def _quoted_original(msg: Message) -> Message | None:
    """The original's header fields as a plain-text bounce quotes them after its marker."""
    for part in _own_parts(msg):
        if part.get_content_type() != "text/plain":
            continue
        text = _decoded_text(part)
        for marker in _COPY_MARKERS:
            if marker in text:
                quoted = text.split(marker, 1)[1].lstrip("\n")
                headers = HeaderParser(policy=compat32).parsestr(quoted)
                if headers.keys():
                    return headers
    return None


def _return_path(original: Message | None) -> str:
    if original is None:
        return ""
    return _field_address(_header(original, "Return-Path"))


def _feedback_id(original: Message | None) -> str:
    if original is None:
        return ""
    return _one_line(_header(original, "Feedback-ID"))[:100]


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
    lowered = text.lower()
    if any(
        phrase in lowered
        for phrase in (
            "----- the following addresses had permanent fatal errors -----",
            "----- transcript of session follows -----",
        )
    ):
        return "sendmail"
    if "this is the qmail-send program" in lowered:
        return "qmail"
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
    if "@" not in address:
        return ""
    return address


def _unmasked(address: str) -> str:
    """The address, or "" when it is a redaction placeholder (see _REDACTED)."""
    return "" if _REDACTED.fullmatch(address) else address


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


# Reading only what is needed ----------------------------------------------------------------
#
# The email package turns every part into objects, line by line, and flufl.bounce's detectors
# then walk every line of every part again. A bounce that returns a newsletter with
# attachments, or a complaint about a message of many parts, is mostly bytes no step here
# reads. essentials() keeps the header fields of every entity, the report parts, and the
# beginning of each text part, and leaves the rest out before anything is parsed; it works on
# bytes with a few regular expressions, so its cost grows with the size of the input at the
# speed of a memory scan.

# Smaller messages are read and kept whole.
READ_WHOLE = 128 * 1024
# A text part's beginning says what happened (the quoted original's header fields follow the
# notice); what comes after is the original's body.
KEEP_TEXT = 64 * 1024
# Report parts (delivery-status, feedback-report, returned header blocks) are small; beyond
# this one is not a report.
KEEP_REPORT = 256 * 1024
# One entity's header block; more is no mail, and is cut at a line.
KEEP_HEADERS = 256 * 1024
# What one message keeps in all, and how many parts and levels of nesting are read. A report
# has three to five parts near the top; an original's hundredth attachment says nothing.
KEEP_TOTAL = 1024 * 1024
KEEP_PARTS = 200
KEEP_DEPTH = 12

_KEPT_WHOLE = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/feedback-report",
        "message/disposition-notification",
        "message/global-disposition-notification",
        *_HEADER_TYPES,
    }
)
# The first line that is not a header field (or a continuation line) ends the header block,
# as it does for the email package's parser; a blank line is such a line.
_HEADER_END = re.compile(rb"^(?![\041-\071\073-\176]*:|[ \t]|From )", re.MULTILINE)
_CTE_FIELD = re.compile(rb"^content-transfer-encoding:[^\n]*(?:\n[ \t][^\n]*)*", re.I | re.M)


@dataclass
class _Budget:
    bytes_left: int = KEEP_TOTAL
    parts_left: int = KEEP_PARTS


def essentials(raw: bytes) -> bytes:
    """The message cut down to what parse_report() reads, with LF line endings.

    Every entity keeps its header fields; multipart bodies keep their parts (up to
    KEEP_PARTS in all), attached messages are cut down the same way, report parts are kept
    whole (up to KEEP_REPORT), text parts keep their first KEEP_TEXT bytes, cut at a line,
    and other parts (images, PDFs, archives) keep only their header fields. What is kept is
    also what the panel stores of an inbound message. A message of READ_WHOLE bytes or less
    (nearly every report) is kept whole: cutting it would save little, and cost as much as
    reading it.
    """
    # Line endings differ between SMTP (CRLF) and mail stores (LF); one form keeps the
    # results identical and keeps stray CRs out of header values and details.
    data = bytes(raw).replace(b"\r\n", b"\n")
    if len(data) <= READ_WHOLE:
        return data
    return _entity(data, depth=0, budget=_Budget(), default_type="text/plain")


def _entity(data: bytes, *, depth: int, budget: _Budget, default_type: str) -> bytes:
    budget.parts_left -= 1
    end = _HEADER_END.search(data, 0, KEEP_HEADERS + 1)
    if end is None:
        # Header fields to the end (or beyond KEEP_HEADERS): the whole of it is header.
        head = _cut(data, KEEP_HEADERS)
        return head
    head = data[: end.start()]
    blank = data[end.start() : end.start() + 1] == b"\n"
    sep = b"\n" if blank else b""
    body = data[end.start() + len(sep) :]
    fields = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n")
    fields.set_default_type(default_type)
    content_type = fields.get_content_type()
    maintype = content_type.partition("/")[0]
    encoded = _header(fields, "Content-Transfer-Encoding").strip().lower() in (
        "base64",
        "quoted-printable",
    )
    if depth >= KEEP_DEPTH or budget.parts_left < 0:
        return head + sep
    if maintype == "multipart":
        boundary = fields.get_boundary()
        parts = _multipart(body, boundary, content_type, depth, budget) if boundary else None
        if parts is not None:
            return head + sep + parts
        # No boundary, or none of its lines: the email package reads the body as text.
        return head + sep + _spend(_cut(body, KEEP_TEXT), budget)
    if content_type in _WHOLE_TYPES:
        if encoded:
            # Not allowed for message/rfc822 (RFC 2046), sent all the same: decoded, the
            # message inside is cut down like any other, and says so in its new field.
            inner = _decoded(body, _header(fields, "Content-Transfer-Encoding"))
            head = _CTE_FIELD.sub(b"Content-Transfer-Encoding: 8bit", head)
        else:
            inner = body
        return (
            head + sep + _entity(inner, depth=depth + 1, budget=budget, default_type="text/plain")
        )
    if content_type in _KEPT_WHOLE:
        return head + sep + _spend(_cut(body, KEEP_REPORT), budget)
    if maintype == "text" or (maintype == "message" and not encoded):
        return head + sep + _spend(_cut(body, KEEP_TEXT), budget)
    return head + sep


def _multipart(
    body: bytes, boundary: str, content_type: str, depth: int, budget: _Budget
) -> bytes | None:
    """A multipart body with each part cut down; the preamble and epilogue are left out.

    A delimiter is a line of "--" and the boundary, closed by one ending in "--"; the line end
    before it belongs to the delimiter (RFC 2046 5.1.1). Without a closing delimiter the last
    part runs to the end, as the email package reads it. None when no delimiter is found.
    """
    marker = boundary.encode("utf-8", "surrogateescape")
    delimiter = re.compile(rb"^--" + re.escape(marker) + rb"(--)?[ \t]*$", re.MULTILINE)
    default = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
    out = [b"\n"]
    start: int | None = None
    found = False
    for match in delimiter.finditer(body):
        found = True
        if start is not None:
            part = body[start : max(start, match.start() - 1)]
            out.append(b"--" + marker + b"\n")
            out.append(_entity(part, depth=depth + 1, budget=budget, default_type=default))
            out.append(b"\n")
        if match.group(1) or budget.parts_left <= 0:
            start = None
            break
        start = match.end() + 1
    else:
        if start is not None and start <= len(body):
            out.append(b"--" + marker + b"\n")
            out.append(_entity(body[start:], depth=depth + 1, budget=budget, default_type=default))
            out.append(b"\n")
    if not found:
        return None
    out.append(b"--" + marker + b"--\n")
    return b"".join(out)


def _cut(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes of `data`, ending at a line end when it had to be cut."""
    if len(data) <= limit:
        return data
    end = data.rfind(b"\n", 0, limit)
    return data[: end + 1] if end > 0 else data[:limit]


def _spend(data: bytes, budget: _Budget) -> bytes:
    kept = _cut(data, max(budget.bytes_left, 0))
    budget.bytes_left -= len(kept)
    return kept


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding.strip().lower() == "base64":
        try:
            return base64.b64decode(b"".join(body.split()))
        except (binascii.Error, ValueError):
            return b""
    return quopri.decodestring(body).replace(b"\r\n", b"\n")
