"""Rating calls: numbers to E.164 and classes, prefixes to rates, seconds to money.

Pure functions, so that the formulas can be checked on their own (Hypothesis, in the tests).
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal

import phonenumbers
from phonenumbers import PhoneNumberType

from telephony.models import DestinationClass

EXACT = Decimal("0.000001")
MAX_CALL_SECONDS = 4 * 3600
DTMF_NUMBER = re.compile(r"^[0-9]{3,20}$")


class NotANumber(ValueError):
    pass


def normalize(digits: str, region: str) -> phonenumbers.PhoneNumber:
    """What a caller keyed in, as a phone number (00 and national prefixes resolved)."""
    if not DTMF_NUMBER.match(digits):
        raise NotANumber(f"{digits!r} is not 3 to 20 digits")
    text = "+" + digits[2:] if digits.startswith("00") else digits
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise NotANumber(str(exc)) from None
    if not phonenumbers.is_valid_number(number):
        raise NotANumber(f"{digits} is not a valid number")
    return number


def e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_CLASSES = {
    PhoneNumberType.FIXED_LINE: DestinationClass.FIXED,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: DestinationClass.FIXED,
    PhoneNumberType.MOBILE: DestinationClass.MOBILE,
    PhoneNumberType.TOLL_FREE: DestinationClass.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE: DestinationClass.PREMIUM,
    PhoneNumberType.SHARED_COST: DestinationClass.SHARED_COST,
}


def classify(number: phonenumbers.PhoneNumber) -> DestinationClass:
    return _CLASSES.get(phonenumbers.number_type(number), DestinationClass.OTHER)


def prefixes(e164_number: str) -> list[str]:
    """Every prefix of the number's digits, longest first (the lookup keys of a deck)."""
    digits = e164_number.lstrip("+")
    return [digits[:n] for n in range(min(len(digits), 15), 0, -1)]


def billed_seconds(
    *, answered: bool, connected: Decimal, initial: int, increment: int, free: int = 0
) -> int:
    """The seconds charged: after ``free`` seconds, the initial block and whole increments.

    0 if unanswered or not longer than the free seconds (ASTPP's included seconds: such a
    call costs nothing, connect fee included); else initial + ceil((rest - initial) /
    increment) * increment of the rest.
    """
    if not answered:
        return 0
    rest = Decimal(connected) - free
    if free and rest <= 0:
        return 0
    extra = max(Decimal(0), rest - initial)
    return initial + math.ceil(extra / increment) * increment


def cost(*, billed: int, per_minute: Decimal, connect_fee: Decimal) -> Decimal:
    if billed == 0:
        return Decimal(0).quantize(EXACT)
    amount = connect_fee + per_minute * Decimal(billed) / 60
    return amount.quantize(EXACT, rounding=ROUND_HALF_EVEN)


def affordable_seconds(
    *,
    hold: Decimal,
    per_minute: Decimal,
    connect_fee: Decimal,
    initial: int,
    increment: int,
    free: int = 0,
) -> int:
    """The longest call whose cost stays within ``hold``; 0 when not even the first block fits.

    Free seconds come on top of what the hold pays for.
    """
    first = (
        cost(billed=initial, per_minute=per_minute, connect_fee=connect_fee)
        if initial
        else connect_fee
    )
    if hold < first:
        return 0
    if per_minute == 0:
        return MAX_CALL_SECONDS
    step = per_minute * Decimal(increment) / 60
    blocks = int((hold - first) / step)
    seconds = initial + blocks * increment
    # Rounding of the cost could push the last block over: step back until it fits.
    while (
        seconds > initial
        and cost(billed=seconds, per_minute=per_minute, connect_fee=connect_fee) > hold
    ):
        seconds -= increment
    return min(seconds + free, MAX_CALL_SECONDS)
