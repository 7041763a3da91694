from __future__ import annotations

from decimal import Decimal

import pytest

from panel.models import BankImport, ImportState, MemberBalance, Payment
from panel.services import bank, ledger


def reference_of(member) -> str:
    return ledger.balance_for(member).payment_reference


def upload(carol, text: str, django_capture_on_commit_callbacks) -> BankImport:
    with django_capture_on_commit_callbacks(execute=True):  # the import task, eagerly
        created = bank.bank_import_create(
            actor=carol, filename="statement.csv", content=text.encode()
        )
    return BankImport.objects.get(pk=created.pk)


def test_good_statement_imports_matches_and_is_idempotent(
    alice, bob, carol, django_capture_on_commit_callbacks
):
    text = (
        "date,amount,reference,counterparty\n"
        f"2026-11-02,25.00,Membership {reference_of(alice)},Alice Example\n"
        f'03.11.2026,"1,234.50",{reference_of(bob).lower()} thanks,Bob\n'
        "2026-11-04,-12.00,Bank fee,Bank\n"
        "2026-11-05,9.99,no reference here,Somebody\n"
    )
    done = upload(carol, text, django_capture_on_commit_callbacks)
    assert done.state == ImportState.DONE
    assert (done.imported, done.duplicates) == (2, 0)
    assert [row["line"] for row in done.unmatched] == ["4", "5"]
    assert MemberBalance.objects.get(member=alice).posted == Decimal("25.00")
    assert MemberBalance.objects.get(member=bob).posted == Decimal("1234.50")
    again = upload(carol, text, django_capture_on_commit_callbacks)
    assert (again.imported, again.duplicates) == (0, 2)
    assert Payment.objects.count() == 2


def test_semicolon_statement_with_decimal_commas(alice, carol, django_capture_on_commit_callbacks):
    text = f"id;date;amount;reference\nTX-1;02.11.2026;1.025,40;{reference_of(alice)}\n"
    done = upload(carol, text, django_capture_on_commit_callbacks)
    assert done.imported == 1
    assert Payment.objects.get().amount == Decimal("1025.40")


def test_malformed_rows_are_reported_by_line_and_nothing_is_imported(
    alice, carol, django_capture_on_commit_callbacks
):
    text = (
        "date,amount,reference\n"
        f"2026-11-02,25.00,{reference_of(alice)}\n"
        "2026-13-02,10.00,x\n"
        f"2026-11-03,ten,{reference_of(alice)}\n"
        "2026-11-04,1.005,y\n"
        "2026-11-05,3.00\n"
        "2026-11-06,4.00,\n"
    )
    done = upload(carol, text, django_capture_on_commit_callbacks)
    assert done.state == ImportState.FAILED
    assert done.errors == [
        "line 3: date '2026-13-02' is not YYYY-MM-DD or DD.MM.YYYY",
        "line 4: amount 'ten' is not a number with at most 2 decimals",
        "line 5: amount '1.005' is not a number with at most 2 decimals",
        "line 6: 2 fields, the header has 3",
        "line 7: reference is empty",
    ]
    assert Payment.objects.count() == 0
    assert MemberBalance.objects.get(member=alice).posted == 0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "the file is empty"),
        ("when,amount,reference\n", "line 1: missing column(s) date"),
        ("date,amount,reference,mood\n", "line 1: unknown column(s) mood"),
    ],
)
def test_bad_headers(carol, text, error):
    with pytest.raises(bank.BankCsvError) as caught:
        bank.parse_bank_csv(text)
    assert error in caught.value.errors[0]
