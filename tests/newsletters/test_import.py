"""CSV import: consent source required, every error with its line, all rows or none."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from newsletters import services
from newsletters.models import ConsentEvent, ImportState, Subscriber, SubscriberStatus
from tests.newsletters.fixtures import add_confirmed

pytestmark = pytest.mark.django_db


def run(alice, mlist, content: bytes, *, mode="confirmed", source="Spring fair sheet"):
    job = services.import_start(
        mlist=mlist,
        member=alice,
        filename="people.csv",
        content=content,
        consent_source=source,
        mode=mode,
    )
    return services.import_run(import_id=job.pk)


def test_a_good_file_is_imported_with_its_consent_record(alice, alice_list):
    job = run(alice, alice_list, b"Email,Name\nAda@Example.org,Ada\nbob@example.org,\n")
    assert job.state == ImportState.DONE
    assert (job.added, job.updated, job.kept) == (2, 0, 0)
    ada = Subscriber.objects.get(email="ada@example.org")
    assert (ada.name, ada.status) == ("Ada", SubscriberStatus.CONFIRMED)
    sources = list(ConsentEvent.objects.filter(subscriber=ada).values_list("kind", "source"))
    where = f"import {job.pk}: Spring fair sheet (people.csv, line 2)"
    assert sources == [("subscribe", where), ("confirm", where)]


def test_every_bad_line_is_named_and_nothing_is_saved(alice, alice_list):
    content = (
        b"email,name\n"
        b"good@example.org,Good\n"
        b"not-an-address,Bad\n"
        b"other@example.org\n"
        b"GOOD@example.org,Again\n"
        b'"multi\nline"@example.org,Quoted\n'
        b'fine@example.org,"Name\r\nBcc: x"\n'
    )
    job = run(alice, alice_list, content)
    assert job.state == ImportState.FAILED
    errors = job.errors.splitlines()
    assert errors[0] == "Line 3: not-an-address is not a valid email address."
    assert errors[1] == "Line 4: 1 fields, the header has 2."
    assert errors[2] == "Line 5: good@example.org is already on line 2."
    # A quoted field spans lines 6 and 7: the error names where it starts, and escapes it.
    assert errors[3] == "Line 6: multi\\nline@example.org is not a valid email address."
    assert errors[4] == "Line 8: The name must be one line without control characters."
    assert not Subscriber.objects.exists()
    assert not ConsentEvent.objects.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The file is empty."),
        (b"address,name\nx@example.org,X\n", "Line 1: the first line must name the columns"),
    ],
)
def test_files_without_the_columns_are_refused(alice, alice_list, content, message):
    job = run(alice, alice_list, content)
    assert job.state == ImportState.FAILED
    assert job.errors.startswith(message)


def test_non_utf8_and_missing_consent_source_are_refused_at_upload(alice, alice_list):
    with pytest.raises(services.NewsletterError, match="Line 3 is not UTF-8"):
        run(alice, alice_list, b"email\na@example.org\nb\xe9@example.org\n")
    with pytest.raises(services.NewsletterError, match="Say where these people gave"):
        run(alice, alice_list, b"email\na@example.org\n", source="  ")


def test_an_import_never_undoes_an_unsubscribe(alice, alice_list):
    gone = add_confirmed(alice_list, 1)[0]
    services.unsubscribe(subscriber=gone, source="unsubscribe page")
    job = run(alice, alice_list, f"email\n{gone.email}\nnew@example.org\n".encode())
    assert (job.added, job.kept) == (1, 1)
    gone.refresh_from_db()
    assert gone.status == SubscriberStatus.UNSUBSCRIBED


def test_double_opt_in_mode_mails_confirmation_requests(
    alice, alice_list, sink, mail_rate, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = run(
            alice, alice_list, b"email\none@example.org\ntwo@example.org\n", mode="double_opt_in"
        )
    assert job.state == ImportState.DONE
    assert set(Subscriber.objects.values_list("status", flat=True)) == {"pending"}
    assert sorted(r[0] for _s, r, _raw in sink.envelopes) == ["one@example.org", "two@example.org"]


def test_a_second_run_of_the_same_import_adds_nothing(alice, alice_list):
    job = run(alice, alice_list, b"email\na@example.org\n")
    again = services.import_run(import_id=job.pk)
    assert again.state == ImportState.DONE
    assert Subscriber.objects.count() == 1
    assert ConsentEvent.objects.count() == 2


def test_the_upload_page_runs_the_import_and_shows_errors(
    client, alice, alice_list, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    upload = SimpleUploadedFile("people.csv", b"email\nbroken\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("newsletters:list_import", args=[alice_list.pk]),
            {"file": upload, "consent_source": "Fair", "mode": "confirmed"},
        )
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "Nothing was imported" in page
    assert "Line 2: broken is not a valid email address." in page


def test_a_big_import_goes_through_in_one_piece(alice, alice_list):
    rows = "\n".join(f"p{i}@example.org,Person {i}" for i in range(5000))
    job = run(alice, alice_list, f"email,name\n{rows}\n".encode())
    assert (job.state, job.added, job.rows_done) == (ImportState.DONE, 5000, 5000)
    assert ConsentEvent.objects.count() == 10000
