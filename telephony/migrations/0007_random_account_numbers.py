"""Account numbers become random with a check digit.

They were the member's user id zero-padded: anyone could list every account to try PINs on.
Members see their new number on the calls page; the old ones stop working at once, which is
the point.
"""

import secrets

from django.db import migrations


def _luhn(digits: str) -> str:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def _new() -> str:
    # The same rule as telephony.pins.account_new, frozen here as migrations must be.
    body = str(secrets.randbelow(9) + 1) + "".join(str(secrets.randbelow(10)) for _ in range(8))
    return body + _luhn(body)


def renumber(apps, schema_editor):  # type: ignore[no-untyped-def]
    CallPlan = apps.get_model("telephony", "CallPlan")
    taken = set(CallPlan.objects.values_list("account_number", flat=True))
    for plan in CallPlan.objects.all():
        number = _new()
        while number in taken:
            number = _new()
        taken.add(number)
        CallPlan.objects.filter(pk=plan.pk).update(account_number=number)


class Migration(migrations.Migration):
    dependencies = [("telephony", "0006_calls_in_the_field")]

    operations = [migrations.RunPython(renumber, migrations.RunPython.noop)]
