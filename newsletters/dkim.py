"""DKIM keys and signatures for newsletter mail.

dkimpy does the DKIM work (header selection, canonicalisation, tag list, folding); only its
RSA step is routed to OpenSSL; the reasons are in "The RSA step, on OpenSSL" below.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.crypto
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

logger = logging.getLogger(__name__)

# RFC 8301: signers MUST use at least 1024 bits; receivers may ignore anything shorter.
MIN_KEY_BITS = 1024


@dataclass(frozen=True)
class KeyPair:
    """A DKIM key pair as the panel stores it.

    PEM for dkimpy's parser, and the public half already in the form the p= tag wants, so
    that showing the DNS record does not need to load the private key.
    """

    private_pem: str
    public_b64: str


def generate_key(bits: int = 2048) -> KeyPair:
    """A fresh RSA key pair (public exponent 65537).

    The private key is PKCS#1 PEM ("BEGIN RSA PRIVATE KEY"), the format every dkimpy release
    parses; the public key is the base64 DER SubjectPublicKeyInfo that RFC 6376 puts in p=.
    """
    if bits < MIN_KEY_BITS:
        raise ValueError(f"DKIM keys need at least {MIN_KEY_BITS} bits, not {bits}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(private_pem=private_pem, public_b64=base64.b64encode(public_der).decode("ascii"))


def dns_record_value(public_b64: str) -> str:
    """The TXT value to publish at <selector>._domainkey.<domain>.

    One line, so that members can paste it into any DNS provider's form; providers split it
    into 255-byte character-strings themselves.
    """
    return f"v=DKIM1; k=rsa; p={public_b64}"


# RFC 6376 3.2: tag-name = ALPHA *ALNUMPUNC (ALNUMPUNC is letters, digits and "_").
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_WHITESPACE = re.compile(r"\s+")


def _unquote_zone_text(record: str) -> str:
    """The value of a TXT record pasted in zone-file form ("v=DKIM1; " "p=MIIB...").

    Members copy records from their provider's panel or from `dig`, which show long values
    as several quoted 255-byte strings; the value is their concatenation.
    """
    stripped = record.strip()
    if not stripped.startswith('"'):
        return record
    parts = _QUOTED.findall(stripped)
    if _QUOTED.sub("", stripped).strip():
        # Text outside the quotes: not zone-file form after all; parse it as it is.
        return record
    return "".join(re.sub(r"\\(.)", r"\1", part) for part in parts)


def _parse_tags(record: str) -> dict[str, str] | None:
    """The tag list of a DKIM key record, or None when it is malformed.

    Duplicate tags make the whole record invalid (RFC 6376 3.2), as do empty tag names.
    """
    tags: dict[str, str] = {}
    for spec in record.split(";"):
        if not spec.strip():
            continue  # a trailing ";" is allowed
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not _TAG_NAME.fullmatch(name) or name in tags:
            return None
        tags[name] = value.strip()
    return tags


def _b64_der(value: str) -> bytes | None:
    try:
        return base64.b64decode(_WHITESPACE.sub("", value), validate=True)
    except (binascii.Error, ValueError):
        return None


def public_key_matches(record: str, public_b64: str) -> bool:
    """Whether a published TXT value carries our public key, usable for our signatures.

    Receivers fetch the record and verify with whatever p= holds, so "matches" means: the
    record parses, p= decodes to the same DER as our key, and no tag makes receivers refuse
    rsa-sha256 email signatures (v= other than DKIM1, k= other than rsa, h= without sha256,
    s= without email or *). An empty p= is a revoked key and never matches.
    """
    tags = _parse_tags(_unquote_zone_text(record))
    if tags is None:
        return False
    if "v" in tags and tags["v"] != "DKIM1":
        return False
    if tags.get("k", "rsa").lower() != "rsa":
        return False
    if "h" in tags and "sha256" not in {h.strip().lower() for h in tags["h"].split(":")}:
        return False
    if "s" in tags and not {s.strip().lower() for s in tags["s"].split(":")} & {"email", "*"}:
        return False
    published = _b64_der(tags.get("p", ""))
    ours = _b64_der(public_b64)
    return bool(published) and published == ours


def sign(
    message: bytes, *, domain: str, selector: str, private_pem: str, headers: Sequence[str]
) -> bytes:
    """The DKIM-Signature header for `message`, folded, CRLF-terminated, to put in front of it.

    relaxed/relaxed, because relaxed header canonicalisation survives the refolding and
    whitespace changes that relays make; rsa-sha256, the algorithm every receiver checks.
    Raises dkim.DKIMException (e.g. ParameterError when From is not among `headers`,
    KeyFormatError for an unusable key).
    """
    return bytes(
        dkim.sign(
            message,
            selector.encode("ascii"),
            domain.encode("ascii"),
            private_pem.encode("ascii"),
            include_headers=[name.encode("ascii") for name in headers],
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
        )
    )


# --- The RSA step, on OpenSSL -----------------------------------------------------------------
#
# Why: dkimpy computes RSA with Python's builtin pow() (dkim.crypto.RSASSA_PKCS1_v1_5_sign):
# 6-9 ms per 2048-bit signature on the panel's machine, nearly all of a whole dkim.sign()
# (6.5 ms). OpenSSL does the same operation in about 0.26 ms, and a whole sign() then takes
# about 0.5 ms. The panel must sign 500+ messages a second on 2 cores: pure-Python RSA alone
# would need 3-4.5 cores for that; with OpenSSL it is about a quarter of one core.
#
# How: DKIM.gen_header() (used by DKIM and ARC signing) calls the module-level name
# `RSASSA_PKCS1_v1_5_sign` of the `dkim` package, looked up at call time. Rebinding that one
# name leaves every other part of dkimpy untouched. Alternatives were worse: overriding
# gen_header means copying 40 lines of dkimpy that change between releases, and patching
# dkim.crypto would not even reach gen_header (the package imported the name by value).
#
# Why it is safe process-wide: RSASSA-PKCS1-v1_5 is deterministic, so OpenSSL's signature is
# byte-for-byte the one dkimpy computes (tests/newsletters/test_dkim.py checks that with
# Hypothesis). Anything the replacement does not recognise (another hash, a key dict of
# another shape, a key OpenSSL refuses, a digest too large for the modulus) goes to dkimpy's
# own function, which then behaves, and raises, exactly as before.

_dkimpy_rsa_sign: Callable[[Any, Any], Any] = dkim.crypto.RSASSA_PKCS1_v1_5_sign

# sha256 only: rsa-sha1 is obsolete for signers (RFC 8301) and the panel never uses it, so its
# rare calls may as well stay on dkimpy's path.
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256()}

# The fields of dkimpy's parsed private key (dkim.crypto.parse_private_key), in the order
# _openssl_key() takes them.
_KEY_FIELDS = (
    "modulus",
    "publicExponent",
    "privateExponent",
    "prime1",
    "prime2",
    "exponent1",
    "exponent2",
    "coefficient",
)


@functools.lru_cache(maxsize=256)
def _openssl_key(numbers: tuple[int, ...]) -> rsa.RSAPrivateKey | None:
    """OpenSSL's key for dkimpy's numbers, or None when OpenSSL refuses them.

    Cached because building the key includes OpenSSL's consistency check, which costs more
    than a signature; dkimpy re-parses the PEM on every sign(), so the cache is keyed by the
    numbers (modulus first), not by object identity. A refused key is cached too (as None),
    so it does not pay the check on every message before falling back.
    """
    n, e, d, p, q, dmp1, dmq1, iqmp = numbers
    try:
        return rsa.RSAPrivateNumbers(
            p=p,
            q=q,
            d=d,
            dmp1=dmp1,
            dmq1=dmq1,
            iqmp=iqmp,
            public_numbers=rsa.RSAPublicNumbers(e, n),
        ).private_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _openssl_rsa_sign(digest: Any, private_key: Any) -> bytes:
    """RSASSA-PKCS1-v1_5 over a finished hash, with OpenSSL; same contract as dkimpy's.

    `digest` is a hash object (hashlib, or dkimpy's HashThrough) with .name and .digest();
    `private_key` is dkimpy's parsed key dict.
    """
    algorithm = _HASHES.get(str(getattr(digest, "name", "")).lower())
    if algorithm is None or not isinstance(private_key, dict):
        return bytes(_dkimpy_rsa_sign(digest, private_key))
    numbers = tuple(private_key.get(field) for field in _KEY_FIELDS)
    if not all(type(number) is int and number > 0 for number in numbers):
        return bytes(_dkimpy_rsa_sign(digest, private_key))
    key = _openssl_key(numbers)
    value = digest.digest()
    if key is None or len(value) != algorithm.digest_size:
        return bytes(_dkimpy_rsa_sign(digest, private_key))
    try:
        return key.sign(value, padding.PKCS1v15(), Prehashed(algorithm))
    except (ValueError, UnsupportedAlgorithm):
        # e.g. a modulus too short for the DigestInfo: dkimpy raises DigestTooLargeError,
        # which gen_header turns into its ParameterError.
        return bytes(_dkimpy_rsa_sign(digest, private_key))


def _install_openssl_rsa() -> bool:
    """Route dkimpy's RSA signing to OpenSSL; True when the fast path is in place.

    Refuses (and logs) when dkimpy no longer looks the way this relies on, rather than
    adding a name nobody reads or replacing someone else's replacement: signing then stays
    correct, only slow, and the tests' speed check fails.
    """
    current = getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)
    if current is _openssl_rsa_sign:
        return True
    gen_header = getattr(getattr(dkim, "DKIM", None), "gen_header", None)
    reads_name = "RSASSA_PKCS1_v1_5_sign" in getattr(
        getattr(gen_header, "__code__", None), "co_names", ()
    )
    if current is not _dkimpy_rsa_sign or not reads_name:
        logger.warning("dkimpy changed: DKIM signing stays on its pure-Python RSA (slow)")
        return False
    dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign
    return True


OPENSSL_RSA = _install_openssl_rsa()
