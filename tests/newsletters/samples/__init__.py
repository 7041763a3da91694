"""Sample bounces, complaints and auto-replies, in the formats their senders produce.

Hosts, addresses and identifiers are invented (documentation IP ranges, example domains);
the structure, field names and fixed wording follow what each MTA or provider sends. The
files hold placeholders so that a test chooses the values it checks:

- ``{{RCPT}}``: the original recipient (Final-Recipient, the original's To, ...);
- ``{{MESSAGE_ID}}``: the original's Message-ID, written as ``<{{MESSAGE_ID}}>``;
- ``{{VERP}}``: the envelope sender of the original, which is where bounces go;
- ``{{FBL}}``: the address feedback reports are sent to.
"""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent

NAMES: list[str] = sorted(path.stem for path in DIRECTORY.glob("*.eml"))


def load(
    name: str,
    *,
    rcpt: str,
    message_id: str,
    verp: str = "bounces@bounces.example.coop",
    fbl: str = "fbl@bounces.example.coop",
) -> bytes:
    """The sample `name` (without ".eml") with its placeholders filled in."""
    if name not in NAMES:
        raise ValueError(f"no sample named {name!r}; there are {', '.join(NAMES)}")
    raw = (DIRECTORY / f"{name}.eml").read_bytes()
    for token, value in (
        (b"{{RCPT}}", rcpt),
        (b"{{MESSAGE_ID}}", message_id),
        (b"{{VERP}}", verp),
        (b"{{FBL}}", fbl),
    ):
        raw = raw.replace(token, value.encode("utf-8"))
    return raw
