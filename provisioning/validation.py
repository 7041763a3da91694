"""Allowlist validation of what members type: domain names and SSH public keys.

Everything that reaches a node passes through here first (and the agent checks again).
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata

from confusable_homoglyphs import (  # type: ignore[import-untyped]
    categories,
    confusables,
)
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

# Used with fullmatch only (as in the agent): "$" would also match before a trailing newline.
LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
}
KEY = re.compile(
    r"(?P<type>[a-z0-9@.-]{7,40}) (?P<data>[A-Za-z0-9+/]{20,8192}={0,3})"
    r"(?: (?P<comment>[^\x00-\x1f\x7f]{0,100}))?"
)
# Scripts one label may combine (UTS #39, "highly restrictive"): Japanese, Chinese and Korean
# are written with several; any other mix is a look-alike's trick.
SCRIPT_SETS = (
    {"LATIN", "HAN", "HIRAGANA", "KATAKANA"},
    {"LATIN", "HAN", "BOPOMOFO"},
    {"LATIN", "HAN", "HANGUL"},
)
NEUTRAL_SCRIPTS = {"COMMON", "INHERITED"}  # digits, the hyphen, combining marks


def _ascii_twin(char: str) -> str | None:
    """The ASCII letter or digit that ``char`` is confusable with (UTS #39 data), if any."""
    for entry in confusables.confusables_data.get(char, ()):
        twin = entry["c"]
        if len(twin) == 1 and twin.isascii() and twin.isalnum():
            return str(twin)
    return None


def _check_unicode_label(label: str) -> None:
    """Refuse a label written to pass for another name.

    A Latin label has no use for a letter that looks like an ASCII one (U+0261 script g,
    U+0131 dotless i, fullwidth letters): its only effect is to imitate the ASCII name. A label
    in another script is refused when every letter of it has an ASCII twin (Cyrillic letters
    spelling "scope"); real words in that script (Moscow's name) have letters of their own.
    """
    for char in label:
        if not char.isascii() and unicodedata.category(char)[0] not in "LMN":
            raise ValidationError(
                _("%(label)s contains %(char)s, which is neither a letter nor a digit.")
                % {"label": label, "char": char}
            )
    scripts = categories.unique_aliases(label) - NEUTRAL_SCRIPTS
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in SCRIPT_SETS):
        raise ValidationError(
            _("%(label)s mixes alphabets; names like that imitate others and are refused.")
            % {"label": label}
        )
    letters = [c for c in label if not c.isascii() and unicodedata.category(c)[0] != "M"]
    twins = {char: _ascii_twin(char) for char in letters}
    found = [char for char in letters if twins[char]]
    if found and (scripts <= {"LATIN"} or len(found) == len(letters)):
        char = found[0]
        raise ValidationError(
            _(
                "%(label)s is written in letters that look like Latin ones: %(char)s "
                "(%(name)s) looks like %(twin)s. Names like that imitate others and are refused."
            )
            % {
                "label": label,
                "char": char,
                "name": unicodedata.name(char, "?"),
                "twin": twins[char],
            }
        )


def clean_domain(raw: str) -> str:
    """A domain as the node will see it: lowercase, IDN as punycode, every label checked."""
    text = raw.strip().rstrip(".").lower()
    if not text:
        raise ValidationError(_("Enter a domain name."))
    if len(text) > 253:
        raise ValidationError(_("A domain name has at most 253 characters."))
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in text):
        raise ValidationError(_("A domain name has no spaces or control characters."))
    if re.search(r"""[/\\;'"`$&|<>(){}\[\]*?!#%,:=]""", text) or ".." in text:
        raise ValidationError(_("%(name)s is not a domain name.") % {"name": raw})
    labels = text.split(".")
    if len(labels) < 2:
        raise ValidationError(_("A domain name has at least two parts, like example.org."))
    ascii_labels = []
    for label in labels:
        if label.startswith("xn--"):
            # Typed as punycode: checked as what it shows, and kept only in its one spelling.
            try:
                shown = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                raise ValidationError(
                    _("%(label)s is not a valid name.") % {"label": label}
                ) from None
            if shown.isascii() or unicodedata.normalize("NFC", shown).lower() != shown:
                raise ValidationError(_("%(label)s is not a valid name.") % {"label": label})
            label = shown
        if not label.isascii():
            # One spelling for one name: a decomposed ü (u + U+0308) is the ü of NFC.
            label = unicodedata.normalize("NFC", label)
            _check_unicode_label(label)
            try:
                label = "xn--" + label.encode("punycode").decode("ascii")
            except UnicodeError:
                raise ValidationError(
                    _("%(label)s is not a valid name.") % {"label": label}
                ) from None
        if not LABEL.fullmatch(label):
            raise ValidationError(
                _(
                    "%(label)s is not a valid part of a domain name "
                    "(letters, digits, hyphens; at most 63)."
                )
                % {"label": label}
            )
        ascii_labels.append(label)
    if ascii_labels[-1].isdigit():
        raise ValidationError(_("Enter a domain name, not an address."))
    name = ".".join(ascii_labels)
    if len(name) > 253:
        raise ValidationError(_("A domain name has at most 253 characters."))
    return name


def clean_public_key(raw: str) -> tuple[str, str]:
    """One OpenSSH public key line (no options) and its SHA256 fingerprint."""
    text = raw.strip()
    if "\n" in text or "\r" in text:
        raise ValidationError(_("Paste exactly one key, on one line."))
    match = KEY.fullmatch(text)
    if not match or match["type"] not in KEY_TYPES:
        raise ValidationError(
            _(
                "This is not an OpenSSH public key "
                "(it starts with ssh-ed25519, ssh-rsa or ecdsa-sha2-…)."
            )
        )
    try:
        blob = base64.b64decode(match["data"], validate=True)
    except ValueError:
        raise ValidationError(_("The key's data is not valid base64.")) from None
    # The blob starts with its own type name; it must agree with the line's.
    if (
        len(blob) < 4
        or blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode(errors="replace") != match["type"]
    ):
        raise ValidationError(_("The key's data does not match its type."))
    comment = re.sub(r"[^A-Za-z0-9@._+-]", "", match["comment"] or "")[:100]
    line = f"{match['type']} {match['data']}" + (f" {comment}" if comment else "")
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return line, fingerprint
