"""Account numbers and PINs for callers without a verified phone.

Account numbers are random with a Luhn check digit: a user id zero-padded told a caller every
member's account. PINs are hashed with PBKDF2 at a cost a caller waits for, not a login's:
a PIN is four to eight digits, so no hash cost makes guessing it expensive; what protects it
is the lockout across calls (``PinLock``). At Django's password cost (a million rounds,
about half a second of CPU) every PIN check was half a second of silence for the caller and
a CPU taken from the calls being set up meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from django.contrib.auth.hashers import check_password

ALGORITHM = "pin_pbkdf2_sha256"
ITERATIONS = 20_000
ACCOUNT_DIGITS = 10  # nine random digits and a check digit


def pin_hash(pin: str, *, salt: str | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt or secrets.token_hex(12)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt.encode(), iterations)
    return f"{ALGORITHM}${iterations}${salt}${base64.b64encode(digest).decode()}"


# Checked against when there is no hash to check (an unknown account, a plan without a PIN),
# so that the answer takes as long as for a real account.
_DUMMY = pin_hash("0000")


def pin_check(pin: str, encoded: str) -> tuple[bool, bool]:
    """Whether ``pin`` matches ``encoded``, and whether the hash should be made again.

    Hashes from before (Django's password hashers) still work, once: they are slow, and the
    caller that got in is given a hash of today's cost.
    """
    if not encoded:
        pin_check(pin, _DUMMY)
        return False, False
    algorithm, _, rest = encoded.partition("$")
    if algorithm != ALGORITHM:
        return check_password(pin, encoded), True
    try:
        iterations_text, salt, _digest = rest.split("$", 2)
        iterations = int(iterations_text)
    except ValueError:
        return False, False
    expected = pin_hash(pin, salt=salt, iterations=iterations)
    return hmac.compare_digest(expected, encoded), iterations != ITERATIONS


def luhn_digit(digits: str) -> str:
    """The Luhn check digit for ``digits``: one mistyped digit or two swapped ones show."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def account_valid(account: str) -> bool:
    return (
        len(account) == ACCOUNT_DIGITS
        and account.isdigit()
        and luhn_digit(account[:-1]) == account[-1]
    )


def account_new() -> str:
    """A random account number; the first digit is never 0 (callers drop leading zeros)."""
    body = str(secrets.randbelow(9) + 1) + "".join(
        str(secrets.randbelow(10)) for _ in range(ACCOUNT_DIGITS - 2)
    )
    return body + luhn_digit(body)
