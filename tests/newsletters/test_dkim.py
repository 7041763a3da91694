"""DKIM keys, records and signatures, and the OpenSSL route for dkimpy's RSA step.

The OpenSSL route is only acceptable because it changes nothing but the speed: RSASSA-PKCS1-v1_5
is deterministic, so the signatures must be byte-identical to dkimpy's own, which Hypothesis
checks on arbitrary messages.
"""

from __future__ import annotations

import base64
import hashlib
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletters import dkim as panel_dkim

# Key generation takes a while; every test shares these two.
KEY = panel_dkim.generate_key()
OTHER_KEY = panel_dkim.generate_key()

DOMAIN = "example.org"
SELECTOR = "sel2024"
SIGNED = ("From", "To", "Subject", "Date", "Message-ID")
RECORD_NAME = f"{SELECTOR}._domainkey.{DOMAIN}.".encode("ascii")
# dkimpy puts the current time in t=; both sides of a comparison must see the same one.
FROZEN_NOW = 1_767_225_600


def dnsfunc_for(record: str) -> Callable[..., bytes]:
    """dkimpy's DNS hook, answering for our selector only."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record.encode("ascii") if name == RECORD_NAME else b""

    return dnsfunc


def verifies(signed: bytes, record: str | None = None) -> bool:
    return bool(
        dkim.verify(
            signed, dnsfunc=dnsfunc_for(record or panel_dkim.dns_record_value(KEY.public_b64))
        )
    )


def sign(message: bytes, private_pem: str = KEY.private_pem) -> bytes:
    return panel_dkim.sign(
        message, domain=DOMAIN, selector=SELECTOR, private_pem=private_pem, headers=SIGNED
    )


@contextmanager
def dkimpy_rsa() -> Iterator[None]:
    """dkimpy exactly as shipped: its own pure-Python RSA."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", panel_dkim._dkimpy_rsa_sign)
        yield


@contextmanager
def frozen_clock() -> Iterator[None]:
    # Only dkimpy's reference to the time module is replaced; Hypothesis keeps the real clock.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dkim, "time", types.SimpleNamespace(time=lambda: float(FROZEN_NOW)))
        yield


def simple_message(body: bytes = b"Hello,\r\n\r\nthe meeting is on Tuesday.\r\n") -> bytes:
    return (
        b"From: Co-op <news@example.org>\r\n"
        b"To: member@example.net\r\n"
        b"Subject: Assembly\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <1@example.org>\r\n"
        b"\r\n" + body
    )


# --- keys and records -------------------------------------------------------------------------


def test_generated_key_is_2048_bit_rsa_and_public_half_matches() -> None:
    private = serialization.load_pem_private_key(KEY.private_pem.encode("ascii"), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    assert private.public_key().public_numbers().e == 65537
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64decode(KEY.public_b64, validate=True) == der
    # dkimpy can read both halves.
    assert dkim.crypto.parse_pem_private_key(KEY.private_pem.encode("ascii"))["modulus"] == (
        private.public_key().public_numbers().n
    )
    assert dkim.crypto.parse_public_key(der)["modulus"] == private.public_key().public_numbers().n
    assert KEY.public_b64 != OTHER_KEY.public_b64


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="1024"):
        panel_dkim.generate_key(512)


def test_record_value_format() -> None:
    assert panel_dkim.dns_record_value("QUJD") == "v=DKIM1; k=rsa; p=QUJD"
    record = panel_dkim.dns_record_value(KEY.public_b64)
    assert record == f"v=DKIM1; k=rsa; p={KEY.public_b64}"
    # A 2048-bit key fits one UDP answer, but not one character-string: providers split it.
    assert 255 < len(record) < 450
    assert panel_dkim.public_key_matches(record, KEY.public_b64)


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


P = KEY.public_b64
MATCHING = {
    "as generated": f"v=DKIM1; k=rsa; p={P}",
    "tags in another order": f"p={P}; k=rsa; v=DKIM1",
    "no v= and no k=": f"p={P}",
    "trailing semicolon and spaces": f"  v=DKIM1 ;k=rsa;  p = {P} ; ",
    "255-byte chunks joined": "".join(_chunks(f"v=DKIM1; k=rsa; p={P}", 255)),
    "chunks joined with spaces": "v=DKIM1; k=rsa; p=" + " ".join(_chunks(P, 255)),
    "folded p= with tabs and newlines": "v=DKIM1; k=rsa; p=" + "\r\n\t".join(_chunks(P, 64)),
    "zone-file quoted strings": " ".join(
        f'"{chunk}"' for chunk in _chunks(f"v=DKIM1; k=rsa; p={P}", 255)
    ),
    "other harmless tags": f"v=DKIM1; h=sha1:sha256; s=email; t=y; n=hello; p={P}",
    "k= in capitals": f"v=DKIM1; k=RSA; p={P}",
}
NOT_MATCHING = {
    "other key": f"v=DKIM1; k=rsa; p={OTHER_KEY.public_b64}",
    "revoked": "v=DKIM1; k=rsa; p=",
    "revoked, blank": "v=DKIM1; k=rsa; p=   ",
    "no p=": "v=DKIM1; k=rsa",
    "empty": "",
    "garbage": "this is not a DKIM record",
    "not base64": f"v=DKIM1; k=rsa; p={P[:-4]}!!!!",
    "truncated key": f"v=DKIM1; k=rsa; p={P[:200]}",
    "other version": f"v=DKIM2; k=rsa; p={P}",
    "other algorithm": f"v=DKIM1; k=ed25519; p={P}",
    "sha1 only": f"v=DKIM1; h=sha1; p={P}",
    "not for email": f"v=DKIM1; s=tlsrpt; p={P}",
    "duplicate p=": f"v=DKIM1; p={OTHER_KEY.public_b64}; p={P}",
    "tag without =": f"v=DKIM1; k; p={P}",
    "bad tag name": f"v=DKIM1; 1k=rsa; p={P}",
    "spf record": "v=spf1 include:_spf.example.org -all",
}


@pytest.mark.parametrize("record", MATCHING.values(), ids=MATCHING.keys())
def test_public_key_matches(record: str) -> None:
    assert panel_dkim.public_key_matches(record, KEY.public_b64)


@pytest.mark.parametrize("record", NOT_MATCHING.values(), ids=NOT_MATCHING.keys())
def test_public_key_does_not_match(record: str) -> None:
    assert not panel_dkim.public_key_matches(record, KEY.public_b64)


def test_our_own_key_must_be_valid_to_match() -> None:
    assert not panel_dkim.public_key_matches("p=", "")
    assert not panel_dkim.public_key_matches("p=@@@@", "@@@@")


# --- signing ----------------------------------------------------------------------------------


def test_signature_header_shape() -> None:
    header = sign(simple_message())
    assert header.startswith(b"DKIM-Signature: ")
    assert header.endswith(b"\r\n")
    lines = header[:-2].split(b"\r\n")
    assert b"\n" not in header.replace(b"\r\n", b"")
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:]), "continuations are folded"
    assert all(len(line) <= 78 for line in lines)
    tags = {k.strip(): v for k, _, v in (t.partition(b"=") for t in b"".join(lines).split(b";"))}
    assert tags[b"a"] == b"rsa-sha256"
    assert tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"d"] == b"example.org"
    assert tags[b"s"] == b"sel2024"
    assert tags[b"h"].replace(b" ", b"") == b"from:to:subject:date:message-id"
    assert verifies(header + simple_message())


def test_pkcs8_private_keys_sign_too() -> None:
    private = serialization.load_pem_private_key(KEY.private_pem.encode("ascii"), password=None)
    pkcs8 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    assert "BEGIN PRIVATE KEY" in pkcs8
    message = simple_message()
    with frozen_clock():
        assert sign(message, pkcs8) == sign(message)


def test_changed_body_fails_verification() -> None:
    message = simple_message()
    header = sign(message)
    assert verifies(header + message)
    tampered = message.replace(b"Tuesday", b"Friday")
    assert not verifies(header + tampered)


@pytest.mark.parametrize(
    ("original", "changed"),
    [
        (b"Subject: Assembly", b"Subject: Assembly cancelled"),
        (b"From: Co-op <news@example.org>", b"From: Co-op <ceo@example.org>"),
        (b"To: member@example.net", b"To: someone@example.net"),
    ],
)
def test_changed_signed_header_fails_verification(original: bytes, changed: bytes) -> None:
    message = simple_message()
    header = sign(message)
    assert not verifies(header + message.replace(original, changed))


def test_unsigned_header_and_refolding_do_not_matter() -> None:
    """relaxed/relaxed: what relays do to messages must not break the signature."""
    message = simple_message()
    header = sign(message)
    relayed = b"Received: from relay\r\n" + message.replace(
        b"Subject: Assembly", b"Subject:   Assembly\r\n \t"
    ).replace(b"Tuesday.", b"Tuesday.   ")
    assert verifies(header + relayed)


def test_signature_does_not_verify_against_another_key() -> None:
    header = sign(simple_message())
    assert not verifies(
        header + simple_message(), panel_dkim.dns_record_value(OTHER_KEY.public_b64)
    )


def test_from_must_be_signed() -> None:
    with pytest.raises(dkim.ParameterError):
        panel_dkim.sign(
            simple_message(),
            domain=DOMAIN,
            selector=SELECTOR,
            private_pem=KEY.private_pem,
            headers=["Subject"],
        )


# --- the OpenSSL route ------------------------------------------------------------------------


def test_openssl_route_is_installed_where_dkimpy_reads_it() -> None:
    assert panel_dkim.OPENSSL_RSA
    assert dkim.RSASSA_PKCS1_v1_5_sign is panel_dkim._openssl_rsa_sign
    assert panel_dkim._dkimpy_rsa_sign is dkim.crypto.RSASSA_PKCS1_v1_5_sign
    # The name is looked up at call time by the code that signs.
    assert "RSASSA_PKCS1_v1_5_sign" in dkim.DKIM.gen_header.__code__.co_names
    # Installing again changes nothing.
    assert panel_dkim._install_openssl_rsa()
    assert dkim.RSASSA_PKCS1_v1_5_sign is panel_dkim._openssl_rsa_sign


def test_signing_goes_through_openssl() -> None:
    before = panel_dkim._openssl_key.cache_info()
    sign(simple_message())
    after = panel_dkim._openssl_key.cache_info()
    assert after.hits + after.misses == before.hits + before.misses + 1


PARSED_KEY = dkim.crypto.parse_pem_private_key(KEY.private_pem.encode("ascii"))


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=200))
def test_openssl_rsa_equals_dkimpy_rsa(data: bytes) -> None:
    fast = panel_dkim._openssl_rsa_sign(hashlib.sha256(data), PARSED_KEY)
    pure = bytes(panel_dkim._dkimpy_rsa_sign(hashlib.sha256(data), PARSED_KEY))
    assert fast == pure
    assert len(fast) == 256


def test_unrecognised_input_falls_back_to_dkimpy() -> None:
    digest = hashlib.sha1(b"old", usedforsecurity=False)
    assert panel_dkim._openssl_rsa_sign(digest, PARSED_KEY) == bytes(
        panel_dkim._dkimpy_rsa_sign(digest, PARSED_KEY)
    )
    # CRT values that do not belong to the modulus: OpenSSL refuses the key; dkimpy signs
    # (garbage) as it always did, and the route must not change that.
    broken = dict(PARSED_KEY, exponent1=PARSED_KEY["exponent1"] + 2)
    digest256 = hashlib.sha256(b"x")
    assert panel_dkim._openssl_rsa_sign(digest256, broken) == bytes(
        panel_dkim._dkimpy_rsa_sign(digest256, broken)
    )


def test_digest_too_large_still_raises_dkimpys_error() -> None:
    # A toy key far too short for a SHA-256 DigestInfo (the Mersenne primes 2^127-1, 2^107-1).
    p, q, e = 2**127 - 1, 2**107 - 1, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    toy = {
        "version": 0,
        "modulus": p * q,
        "publicExponent": e,
        "privateExponent": d,
        "prime1": p,
        "prime2": q,
        "exponent1": d % (p - 1),
        "exponent2": d % (q - 1),
        "coefficient": pow(q, -1, p),
    }
    with pytest.raises(dkim.crypto.DigestTooLargeError):
        panel_dkim._openssl_rsa_sign(hashlib.sha256(b"x"), toy)


# Header values as members type them: plain ASCII, or any printable text sent as RFC 2047
# encoded words (folded onto several lines when long).
header_text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=60),
)
body_line = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), include_characters="\t"),
    max_size=100,
)


def _encoded(name: str, value: str) -> str:
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def _header(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("ascii")


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    name = draw(header_text)
    sent = draw(
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
            lambda moment: moment.replace(tzinfo=UTC)
        )
    )
    token = draw(st.from_regex(r"[A-Za-z0-9.$%_-]{1,40}", fullmatch=True))
    headers = (
        _header("From", f"{_encoded('From', name)} <news@example.org>")
        + _header("To", _encoded("To", draw(header_text)))
        + _header("Subject", _encoded("Subject", draw(header_text)))
        + _header("Date", format_datetime(sent))
        + _header("Message-ID", f"<{token}@example.org>")
    )
    lines = draw(st.lists(body_line, max_size=20))
    trailer = draw(st.sampled_from(["", "\r\n", "\r\n\r\n\r\n"]))
    return headers + b"\r\n" + ("\r\n".join(lines) + trailer).encode("utf-8")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages())
def test_signatures_are_dkimpys_own_and_verify(message: bytes) -> None:
    with frozen_clock():
        fast = sign(message)
        with dkimpy_rsa():
            pure = sign(message)
        assert fast == pure
        assert verifies(fast + message)


def _cpu_seconds_to_sign(messages: list[bytes]) -> float:
    # Thread CPU time: the suite shares the machine, and waiting for a core is not signing.
    start = time.thread_time()
    for message in messages:
        sign(message)
    return time.thread_time() - start


def test_openssl_route_is_much_faster_than_pure_python() -> None:
    batch = [simple_message(f"Message {i}\r\n".encode("ascii")) for i in range(200)]
    sign(batch[0])  # OpenSSL's key is built (and checked) once; that is not per message
    fast = _cpu_seconds_to_sign(batch)
    with dkimpy_rsa():
        pure = _cpu_seconds_to_sign(batch)
    assert pure >= 4 * fast, f"OpenSSL {fast / 200 * 1e3:.2f} ms, dkimpy {pure / 200 * 1e3:.2f} ms"
