"""Hypothesis over every form of the panel app, through the test client.

Accounts (allauth's signup, login, password reset and change, email), membership (apply,
leave), the staff pages (application decisions, payments, bank statement upload and import,
supplier invoices, the close wizard) and the language switch get random Unicode, overlong
values, control characters, wrong types (a file for text, text for a file, a JSON body) and
missing fields. Whatever comes in: never a 500 or a traceback; a refused form answers 200 or
4xx with an error next to the field it names; nothing is saved.

Each example runs in a savepoint that is rolled back, so that examples do not change what the
next one meets; "nothing saved" compares the row counts of every table before and after.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import pytest
from allauth.account.forms import default_token_generator
from allauth.account.utils import user_pk_to_url_str
from django.apps import apps
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panel.models import BillingPeriod, Supplier, User
from panel.services import bank, ledger
from tests.conftest import pending_application
from tests.factories import PASSWORD, make_user

# Small budgets: the whole file runs in well under a minute on two shared cores.
FUZZ = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()

# Any character the test client can send: it encodes UTF-8, which lone surrogates are not.
CHAR = st.characters(exclude_categories=["Cs"])
UNICODE = st.text(CHAR, max_size=40)
PRINTABLE = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))
# C0 and C1 controls other than tab and line breaks, which a multi-line field may hold.
CONTROLS = st.text(
    st.characters(categories=["Cc"], exclude_characters="\t\n\r"), min_size=1, max_size=3
)
LINE_BREAKS = st.text(st.sampled_from("\t\n\r\x0b\x0c\x85"), min_size=1, max_size=2)


def with_inside(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value with ``inner`` between printable characters (so that strip() keeps it)."""
    edge = st.text(PRINTABLE, min_size=1, max_size=8)
    return st.builds(lambda a, b, c: a + b + c, edge, inner, edge)


def overlong(limit: int) -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * (limit + 1 + n), PRINTABLE, st.integers(0, 40))


def upload(content: bytes = b"x", name: str = "f.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/csv")


# A file where text belongs: the client sends it in FILES, so the text field is missing.
A_FILE = st.builds(upload, st.binary(max_size=40))
BLANK = st.sampled_from(["", " ", "\t", "\n \r\n"])
# Passwords are not stripped: any character is one, only none at all is missing.
NO_PASSWORD = st.one_of(st.just(MISSING), st.just(""), A_FILE)
# A checkbox is ticked by any value but "false" and "" (Django reads "0" as ticked).
UNTICKED = st.one_of(st.just(MISSING), st.sampled_from(["", "false", "False"]))


def missing_or_blank() -> st.SearchStrategy[Any]:
    return st.one_of(st.just(MISSING), BLANK, A_FILE)


def single_line(limit: int, *, required: bool = True) -> st.SearchStrategy[Any]:
    """What a one-line text field must refuse."""
    bad = [overlong(limit), with_inside(CONTROLS), with_inside(LINE_BREAKS)]
    if required:
        bad.append(missing_or_blank())
    return st.one_of(*bad)


def multi_line(limit: int, *, required: bool = True) -> st.SearchStrategy[Any]:
    """What a text area must refuse: line breaks and tabs are its own."""
    bad = [overlong(limit), with_inside(CONTROLS)]
    if required:
        bad.append(missing_or_blank())
    return st.one_of(*bad)


NOT_A_NUMBER = st.one_of(
    # Not "١٢": Python reads digits of every script, and twelve is twelve.
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "0x10", "1,2,3", "--1", "½"]),
    st.text(st.characters(exclude_categories=("Cs", "Nd")), min_size=1, max_size=12).filter(
        lambda s: s.strip() != ""
    ),
)
NOT_A_DATE = st.one_of(
    st.sampled_from(["2026-02-30", "0000-01-01", "10000-01-01", "2026-13-01", "yesterday"]),
    st.text(CHAR, min_size=1, max_size=12).filter(lambda s: not re.search(r"\d", s)),
)
# Real dates no money moves on: typed years (0026 for 2026) and the calendar's ends, where a
# month's next month cannot be computed.
BAD_BOOKING_DAY = st.sampled_from(["0001-01-01", "0026-10-05", "1999-12-31", "9999-12-31"])
NOT_AN_ID = st.one_of(
    st.sampled_from(["0", "-1", "99999999", str(2**63), str(10**30), "1.5", "1e3", "abc"]),
    st.text(CHAR, min_size=1, max_size=10).filter(lambda s: not s.strip().isdigit()),
)


def _counted_tables() -> list[str]:
    """Every table but sessions (signing in writes one; nothing else may appear)."""
    return sorted(
        {
            model._meta.db_table
            for model in apps.get_models(include_auto_created=True)
            if model._meta.managed
            and not model._meta.proxy
            and model._meta.db_table != "django_session"
        }
    )


def row_counts() -> dict[str, int]:
    """The number of rows of every table, in one query (it runs twice per example)."""
    tables = _counted_tables()
    quote = connection.ops.quote_name
    # Table names from the models, quoted.
    select = ", ".join(f"(SELECT count(*) FROM {quote(t)})" for t in tables)  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {select}")
        return dict(zip(tables, cursor.fetchone(), strict=True))


@contextmanager
def example() -> Iterator[None]:
    """One example: a savepoint rolled back at the end, allauth's rate limits forgotten."""
    cache.clear()
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def post(client, url: str, data: dict[str, Any], **extra: Any):
    """A form POST; MISSING values are left out, files go as multipart like a browser's."""
    sent = {k: v for k, v in data.items() if v is not MISSING}
    return client.post(url, sent, **extra)


def assert_refused(
    response, field: str, before: dict[str, int], *, hidden: bool = False, or_form_error: str = ""
) -> None:
    """A refused form: 200 or 4xx, an error tied to ``field`` in the page, no row written.

    ``or_form_error``: a form-level error that names the field too (sign-in names email and
    password together, so as not to tell which one was wrong).
    """
    assert response.status_code in (200, 400, 422), (field, response.status_code)
    page = response.content.decode()
    assert "Traceback" not in page
    if or_form_error and or_form_error in html.unescape(page):
        pass
    elif hidden:
        assert f"(Hidden field {field})" in page, f"no error for hidden field {field}"
    else:
        assert f'id="id_{field}_errors"' in page, f"no error tied to {field}"
    assert row_counts() == before, "a refused form saved something"


def assert_no_crash(response) -> None:
    assert response.status_code < 500, response.status_code
    assert "Traceback" not in response.content.decode()


@st.composite
def corrupted(
    draw: st.DrawFn,
    valid: dict[str, st.SearchStrategy[Any]],
    invalid: dict[str, st.SearchStrategy[Any]],
) -> tuple[str, dict[str, Any]]:
    """Form data with one field surely invalid and every other one valid or random."""
    field = draw(st.sampled_from(sorted(invalid)))
    data = {name: draw(strategy) for name, strategy in valid.items() if name != field}
    data[field] = draw(invalid[field])
    return field, data


def valid_or(value: Any, *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid value, sometimes random Unicode or something else."""
    return st.one_of(st.just(value), st.just(value), UNICODE, *others)


# Accounts (allauth) -------------------------------------------------------------------------


@FUZZ
@given(
    case=corrupted(
        valid={
            "email": valid_or("fuzz@example.org"),
            "password1": st.just(PASSWORD),
            "password2": st.just(PASSWORD),
        },
        invalid={
            "email": st.one_of(
                missing_or_blank(),
                st.text(CHAR, max_size=30).filter(lambda s: "@" not in s),
                with_inside(CONTROLS).map(lambda s: f"{s}@example.org"),
                overlong(254).map(lambda s: f"{s}@example.org"),
            ),
            "password1": st.one_of(NO_PASSWORD, st.text(PRINTABLE, max_size=9)),
            "password2": st.one_of(NO_PASSWORD, st.text(CHAR, max_size=30)),
        },
    )
)
def test_signup(client, db, case):
    field, data = case
    with example():
        before = row_counts()
        response = post(client, reverse("account_signup"), data)
        assert_refused(response, field, before)


@FUZZ
@given(
    case=corrupted(
        valid={"login": valid_or("alice@example.org"), "password": valid_or(PASSWORD)},
        invalid={
            "login": st.one_of(
                missing_or_blank(),
                with_inside(CONTROLS).map(lambda s: f"{s}@example.org"),
                overlong(254).map(lambda s: f"{s}@example.org"),
            ),
            "password": NO_PASSWORD,
        },
    )
)
def test_login(client, alice, case):
    field, data = case
    with example():
        before = row_counts()
        response = post(client, reverse("account_login"), data)
        wrong = "The email address and/or password you specified are not correct."
        assert_refused(response, field, before, or_form_error=wrong)


@FUZZ
@given(
    value=st.one_of(
        missing_or_blank(),
        st.text(CHAR, max_size=30).filter(lambda s: "@" not in s),
        with_inside(CONTROLS).map(lambda s: f"{s}@example.org"),
        overlong(254).map(lambda s: f"{s}@example.org"),
    )
)
def test_password_reset(client, alice, mailoutbox, value):
    with example():
        before = row_counts()
        response = post(client, reverse("account_reset_password"), {"email": value})
        assert_refused(response, "email", before)
        assert not mailoutbox


@FUZZ
@given(
    case=corrupted(
        valid={"password1": st.just("a new long passphrase 8"), "password2": st.just(MISSING)},
        invalid={
            "password1": st.one_of(NO_PASSWORD, st.text(PRINTABLE, max_size=9)),
            "password2": st.one_of(NO_PASSWORD, st.text(CHAR, max_size=30)),
        },
    )
)
def test_password_reset_from_key(client, alice, case):
    field, data = case
    if data.get("password2", MISSING) is MISSING and field != "password2":
        data["password2"] = data.get("password1")
    key_url = reverse(
        "account_reset_password_from_key",
        kwargs={
            "uidb36": user_pk_to_url_str(alice),
            "key": default_token_generator.make_token(alice),
        },
    )
    with example():
        form_url = client.get(key_url)["Location"]  # the key moves into the session
        before = row_counts()
        assert_refused(post(client, form_url, data), field, before)
        assert User.objects.get(pk=alice.pk).check_password(PASSWORD)


@FUZZ
@given(
    case=corrupted(
        valid={
            "oldpassword": st.just(PASSWORD),
            "password1": st.just("a new long passphrase 8"),
            "password2": st.just("a new long passphrase 8"),
        },
        invalid={
            "oldpassword": st.one_of(NO_PASSWORD, st.text(CHAR, min_size=1, max_size=30)),
            "password1": st.one_of(NO_PASSWORD, st.text(PRINTABLE, max_size=9)),
            "password2": st.one_of(NO_PASSWORD, st.text(CHAR, max_size=30)),
        },
    )
)
def test_password_change(client, alice, case):
    field, data = case
    with example():
        client.force_login(alice)
        before = row_counts()
        response = post(client, reverse("account_change_password"), data)
        assert_refused(response, field, before)
        assert User.objects.get(pk=alice.pk).check_password(PASSWORD)


@FUZZ
@given(
    value=st.one_of(
        missing_or_blank(),
        st.text(CHAR, max_size=30).filter(lambda s: "@" not in s),
        with_inside(CONTROLS).map(lambda s: f"{s}@example.org"),
        overlong(254).map(lambda s: f"{s}@example.org"),
    )
)
def test_email_change(client, alice, value):
    with example():
        client.force_login(alice)
        before = row_counts()
        response = post(client, reverse("account_email"), {"action_add": "", "email": value})
        assert_refused(response, "email", before)


@FUZZ
@given(
    code=st.one_of(
        NO_PASSWORD,
        st.text(st.sampled_from("0123456789"), min_size=1, max_size=12),
        st.text(CHAR, min_size=1, max_size=12),
        with_inside(CONTROLS),
        overlong(64),
    )
)
def test_two_factor_activation(client, alice, code):
    """Turning on TOTP with a code that is not the current one (a right guess is 1 in 10^6)."""
    with example():
        # Security settings ask for the password again, however recent the sign-in.
        client.force_login(alice)
        client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
        client.get(reverse("mfa_activate_totp"))  # the secret is made and kept in the session
        before = row_counts()
        response = post(client, reverse("mfa_activate_totp"), {"code": code})
        assert_refused(response, "code", before)


@FUZZ
@given(password=st.one_of(NO_PASSWORD, st.text(CHAR, min_size=1, max_size=40), overlong(4096)))
def test_reauthentication(client, alice, password):
    with example():
        client.force_login(alice)
        before = row_counts()
        response = post(client, reverse("account_reauthenticate"), {"password": password})
        assert_refused(response, "password", before)


# Membership ---------------------------------------------------------------------------------


@pytest.fixture
def stranger(db, statutes) -> User:
    """Signed up, not applied: the apply form is theirs."""
    return make_user(email="stranger@example.org")


@FUZZ
@given(data=st.data())
def test_membership_apply(client, stranger, statutes, data):
    field, form = data.draw(
        corrupted(
            valid={
                "name": valid_or("Stranger Example"),
                "statement": valid_or("I would like to join.\nThank you."),
                "agree": valid_or("on"),
                "statutes_version": st.just(str(statutes.version)),
            },
            invalid={
                "name": single_line(200),
                "statement": multi_line(2000),
                "agree": UNTICKED,
                "statutes_version": st.one_of(st.just(MISSING), NOT_AN_ID),
            },
        )
    )
    with example():
        client.force_login(stranger)
        before = row_counts()
        response = post(client, reverse("membership_apply"), form)
        if field == "statutes_version" and form[field] is not MISSING:
            # A number that is not the current version: the statutes changed meanwhile.
            assert_no_crash(response)
            assert response.status_code == 200
            assert row_counts() == before
            return
        assert_refused(response, field, before, hidden=field == "statutes_version")


@FUZZ
@given(
    case=corrupted(
        valid={"confirm": st.just("on"), "reason": valid_or("Moving away.")},
        invalid={
            "confirm": UNTICKED,
            "reason": multi_line(2000, required=False),
        },
    )
)
def test_membership_leave(client, alice, case):
    field, data = case
    with example():
        client.force_login(alice)
        before = row_counts()
        assert_refused(post(client, reverse("membership_leave"), data), field, before)


# Staff ------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), htmx=st.booleans())
def test_application_decision(client, carol, dave, data, htmx):
    application = pending_application(dave)
    prefix = f"a{application.pk}-"
    field, form = data.draw(
        corrupted(
            valid={"decision": st.sampled_from(["approved", "declined"]), "reason": UNICODE},
            invalid={
                "decision": st.one_of(
                    missing_or_blank(),
                    st.text(CHAR, max_size=20).filter(lambda s: s not in ("approved", "declined")),
                ),
                "reason": multi_line(2000, required=False),
            },
        )
    )
    if field == "decision" and form["reason"] == "":
        form["reason"] = "why"  # else an empty reason may be the error shown instead
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    url = reverse("staff_application_decide", args=[application.pk])
    with example():
        client.force_login(carol)
        before = row_counts()
        response = post(client, url, {prefix + k: v for k, v in form.items()}, **headers)
        assert_refused(response, prefix + field, before)


@pytest.fixture
def open_period(db) -> BillingPeriod:
    return ledger.period_for(date(2026, 10, 1))


@FUZZ
@given(data=st.data())
def test_payment(client, carol, alice, data):
    field, form = data.draw(
        corrupted(
            valid={
                "member": st.just(str(alice.pk)),
                "amount": valid_or("12.50"),
                "received_on": valid_or("2026-10-05"),
                "reference": valid_or("transfer"),
                "nonce": st.just("AbCdEfGhIjKlMnOp1234"),
            },
            invalid={
                "member": st.one_of(missing_or_blank(), NOT_AN_ID),
                "amount": st.one_of(
                    missing_or_blank(),
                    NOT_A_NUMBER,
                    st.sampled_from(["0", "-1", "0.001", "1234567890123.45", "1e20"]),
                ),
                "received_on": st.one_of(missing_or_blank(), NOT_A_DATE, BAD_BOOKING_DAY),
                "reference": single_line(200),
                "nonce": st.one_of(
                    missing_or_blank(),
                    st.text(CHAR, max_size=15),
                    with_inside(st.sampled_from(["/", " ", "\x00", "ä", "\n"])),
                ),
            },
        )
    )
    with example():
        client.force_login(carol)
        before = row_counts()
        response = post(client, reverse("staff_payments"), form)
        assert_refused(response, field, before, hidden=field == "nonce")


@FUZZ
@given(
    statement=st.one_of(
        st.just(MISSING),
        UNICODE,  # text where a file belongs
        st.builds(upload, st.just(b"")),
        st.builds(upload, st.binary(max_size=200).filter(lambda b: not _decodes(b))),
        st.builds(upload, with_inside(st.just("\x00")).map(str.encode)),
    )
)
def test_bank_statement_upload_refused(client, carol, statement):
    with example():
        client.force_login(carol)
        before = row_counts()
        response = post(client, reverse("staff_bank_upload"), {"statement": statement})
        assert_refused(response, "statement", before)


@settings(FUZZ, max_examples=15)
@given(name=st.text(CHAR, min_size=1, max_size=300))
def test_bank_statement_file_name(client, carol, name):
    """The name comes from the browser: any name, with a good file, is taken or refused."""
    content = b"date,amount,reference\n2026-10-05,12.50,CP000001\n"
    with example():
        client.force_login(carol)
        response = post(client, reverse("staff_bank_upload"), {"statement": upload(content, name)})
        assert_no_crash(response)
        assert response.status_code in (302, 422)


@FUZZ
@given(data=st.data())
def test_bank_statement_rows_never_crash_the_import(carol, alice, data):
    """Well-formed statements with the values a bank file may hold, alice's reference among
    them: the import ends, done or failed with its lines named; never an exception."""
    reference = ledger.balance_for(alice).payment_reference
    row = st.tuples(
        st.one_of(
            st.sampled_from(["2026-10-05", "05.10.2026", "2026-02-29"]),
            BAD_BOOKING_DAY,
            BAD_BOOKING_DAY.map(lambda d: ".".join(reversed(d.split("-")))),
        ),
        st.sampled_from(
            ["12.50", "0.01", "-3.00", "0", "1,000.00", "9" * 30 + ".00", "1" + "0" * 14]
        ),
        st.one_of(st.just(f"Membership {reference}"), st.just(reference.lower()), UNICODE),
        st.sampled_from(["", "T1", "T2"]),
    )
    rows = data.draw(st.lists(row, min_size=1, max_size=5))
    text = "date,amount,reference,id\n" + "\n".join(
        ",".join(f'"{cell.replace(chr(34), chr(34) * 2)}"' for cell in r) for r in rows
    )
    with example():
        try:
            upload_ = bank.bank_import_create(
                actor=carol, filename="statement.csv", content=text.encode()
            )
        except bank.BankCsvError as exc:
            # Refused at upload (a NUL in a cell): with the line, and nothing kept.
            assert "\x00" in text
            refused = exc.errors
            assert all(re.match(r"line \d+: ", e) for e in refused), refused
            return
        result = bank.bank_import_run(import_id=upload_.pk)
        assert result.state in ("failed", "done"), result.state
        if result.state == "failed":
            named = [re.match(r"line \d+: ", e) for e in result.errors]
            assert result.errors
            assert all(named), result.errors


@settings(FUZZ, max_examples=200)
@given(
    value=st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True),
        st.integers(),
        st.text(CHAR, max_size=40),
        st.floats(),
    )
)
def test_money_takes_any_value_or_says_why_not(value):
    """The ledger's amount check: an amount or a LedgerError, whatever it is given."""
    refused = False
    try:
        amount = ledger.money(value, "amount")
    except ledger.LedgerError:
        refused = True
    if not refused:
        assert amount.as_tuple().exponent == -6


def _decodes(content: bytes) -> bool:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            content.decode(encoding)
        except UnicodeDecodeError:
            continue
        return True
    return False


CSV_CELL = st.one_of(
    UNICODE,
    st.sampled_from(["2026-10-05", "05.10.2026", "12,50", "12.50", "-3", "CP000001", '"', ";"]),
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["date", "amount", "reference", "id", "counterparty", "x", ""]),
        max_size=6,
    ),
    rows=st.lists(st.lists(CSV_CELL, max_size=6), max_size=6),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_bank_statement_content_never_crashes_the_import(carol, alice, header, rows, delimiter):
    """Whatever the file holds: refused at upload, or an import that ends, failed with its
    lines named or done; never an exception in the worker."""
    text = "\n".join(delimiter.join(line) for line in [header, *rows])
    with example():
        refused: list[str] = []
        try:
            upload_ = bank.bank_import_create(
                actor=carol, filename="statement.csv", content=text.encode()
            )
        except bank.BankCsvError as exc:
            refused = exc.errors
        if refused:
            return
        result = bank.bank_import_run(import_id=upload_.pk)
        assert result.state in ("failed", "done"), result.state
        if result.state == "failed":
            assert result.errors
            named = [re.match(r"(line \d+: |the file )", e) for e in result.errors]
            assert all(named), result.errors


@pytest.fixture
def supplier(db) -> Supplier:
    return Supplier.objects.create(name="Hetzner")


@FUZZ
@given(data=st.data())
def test_supplier_invoice(client, carol, open_period, supplier, data):
    field, form = data.draw(
        corrupted(
            valid={
                "supplier": st.just(str(supplier.pk)),
                "service": st.just("hosting"),
                "period": st.just(str(open_period.pk)),
                "reference": valid_or("INV-1"),
                "invoice_date": valid_or("2026-10-05"),
                "amount": valid_or("12.345678"),
                "description": valid_or("servers"),
            },
            invalid={
                "supplier": st.one_of(missing_or_blank(), NOT_AN_ID),
                "service": st.one_of(missing_or_blank(), st.text(CHAR, max_size=10)),
                "period": st.one_of(missing_or_blank(), NOT_AN_ID),
                "reference": single_line(100),
                "invoice_date": st.one_of(missing_or_blank(), NOT_A_DATE),
                "amount": st.one_of(
                    missing_or_blank(), NOT_A_NUMBER, st.sampled_from(["0", "-5", "1.1234567"])
                ),
                "description": single_line(300, required=False),
            },
        )
    )
    if field == "service" and form["service"] in ("hosting", "newsletters", "calls", "other"):
        form["service"] = "no-such-service"
    with example():
        client.force_login(carol)
        before = row_counts()
        assert_refused(post(client, reverse("staff_invoices"), form), field, before)


@FUZZ
@given(
    case=corrupted(
        valid={
            "deficit_choice": st.sampled_from(["", "reserve", "per_head"]),
            "confirm": valid_or("on"),
        },
        invalid={
            "deficit_choice": st.text(CHAR, min_size=1, max_size=12).filter(
                lambda s: s.strip() not in ("", "reserve", "per_head")
            ),
            "confirm": UNTICKED,
        },
    )
)
def test_close_wizard(client, carol, open_period, case):
    field, data = case
    with example():
        client.force_login(carol)
        before = row_counts()
        response = post(client, reverse("staff_close", args=[open_period.pk]), data)
        assert_refused(response, field, before)
        assert BillingPeriod.objects.get(pk=open_period.pk).state == "open"


# Everything at once -------------------------------------------------------------------------

FORM_PAGES: list[tuple[str, str | None, Callable[..., str]]] = [
    # (URL name, who posts: a fixture name or None, how to get the URL)
    ("account_signup", None, lambda ctx: reverse("account_signup")),
    ("account_login", None, lambda ctx: reverse("account_login")),
    ("account_reset_password", None, lambda ctx: reverse("account_reset_password")),
    ("account_change_password", "alice", lambda ctx: reverse("account_change_password")),
    ("account_email", "alice", lambda ctx: reverse("account_email")),
    ("membership_apply", "stranger", lambda ctx: reverse("membership_apply")),
    ("membership_leave", "alice", lambda ctx: reverse("membership_leave")),
    (
        "staff_application_decide",
        "carol",
        lambda ctx: reverse("staff_application_decide", args=[ctx["application"].pk]),
    ),
    ("staff_payments", "carol", lambda ctx: reverse("staff_payments")),
    ("staff_bank_upload", "carol", lambda ctx: reverse("staff_bank_upload")),
    ("staff_invoices", "carol", lambda ctx: reverse("staff_invoices")),
    ("staff_close", "carol", lambda ctx: reverse("staff_close", args=[ctx["period"].pk])),
]
KEYS = st.sampled_from(
    [
        "email", "password", "password1", "password2", "oldpassword", "login", "name",
        "statement", "agree", "statutes_version", "confirm", "reason", "member", "amount",
        "received_on", "reference", "nonce", "supplier", "service", "period", "invoice_date",
        "description", "deficit_choice", "action_add", "action_remove", "action_primary",
    ]
)  # fmt: skip
ANY_VALUE = st.one_of(UNICODE, CONTROLS, overlong(300), NOT_A_NUMBER, A_FILE)


@settings(FUZZ, max_examples=40)
@given(
    page=st.sampled_from(FORM_PAGES),
    form=st.dictionaries(KEYS, ANY_VALUE, max_size=8),
    as_json=st.booleans(),
)
def test_any_input_to_any_form_is_answered(
    client, alice, carol, dave, stranger, open_period, page, form, as_json
):
    """Random fields, random values, or a JSON body where a form belongs: an answer, never an
    error page; whatever is refused leaves the tables as they were."""
    name, who, url_of = page
    users = {"alice": alice, "carol": carol, "stranger": stranger}
    ctx = {"application": pending_application(dave), "period": open_period}
    with example():
        if who:
            client.force_login(users[who])
        before = row_counts()
        url = url_of(ctx)
        if as_json:
            body = json.dumps({k: v for k, v in form.items() if isinstance(v, str)})
            response = client.post(url, body, content_type="application/json")
        else:
            response = post(client, url, form)
        assert_no_crash(response)
        if response.status_code != 302:
            assert row_counts() == before, name


@FUZZ
@given(
    language=st.one_of(st.just(MISSING), UNICODE, st.sampled_from(["de", "es", "en", "xx"])),
    next_=st.one_of(
        st.just(MISSING),
        UNICODE,
        st.sampled_from(
            ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"]
        ),
    ),
)
def test_language_switch(client, alice, language, next_):
    """Any language and any next: a redirect to a page of ours, never elsewhere."""
    with example():
        client.force_login(alice)
        response = post(client, reverse("set_language"), {"language": language, "next": next_})
        assert_no_crash(response)
        if response.status_code == 302:
            location = response["Location"]
            assert url_has_allowed_host_and_scheme(location, allowed_hosts=None), location
            assert not urlsplit(location).netloc, location


@FUZZ
@given(page=UNICODE, label=st.text(CHAR, min_size=1, max_size=20).filter(lambda s: "/" not in s))
def test_query_and_path_values(client, alice, page, label):
    """Pages that read the query string or a path segment answer, whatever they are given."""
    with example():
        client.force_login(alice)
        assert_no_crash(client.get(reverse("activity"), {"page": page}))
        for name in ("statement", "statement_csv"):
            try:
                url = reverse(name, args=[label])
            except Exception:  # noqa: S112  (not a path segment this URL takes)
                continue
            response = client.get(url)
            assert_no_crash(response)
            assert response.status_code in (200, 404)
