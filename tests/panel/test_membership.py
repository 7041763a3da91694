import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from panel import services
from panel.models import (
    Application,
    AuditEntry,
    Membership,
    MembershipEvent,
    MembershipStatus,
    Share,
)
from tests.conftest import pending_application, text_and_html
from tests.factories import make_statutes, make_user


def test_apply_makes_an_applicant_with_history_and_audit(db, statutes):
    user = make_user()
    application = services.membership_apply(
        user=user, name="Erin", statement="Hello", statutes=statutes
    )
    membership = Membership.objects.get(user=user)
    assert membership.status == MembershipStatus.APPLICANT
    assert application.statutes == statutes
    assert application.agreed_at is not None
    assert list(membership.events.values_list("from_status", "to_status")) == [("", "applicant")]
    assert set(AuditEntry.objects.filter(owner=user).values_list("action", flat=True)) == {
        "membership.applicant",
        "application.submitted",
    }


def test_apply_against_outdated_statutes_is_refused(db, statutes):
    make_statutes()  # a newer version appears while the person reads
    with pytest.raises(services.MembershipError, match="statutes changed"):
        services.membership_apply(user=make_user(), name="E", statement="x", statutes=statutes)


def test_approve_issues_exactly_one_share(db, carol, dave):
    share = services.membership_approve(application=pending_application(dave), actor=carol)
    assert share.user == dave
    assert Membership.objects.get(user=dave).status == MembershipStatus.MEMBER
    with pytest.raises(services.MembershipError, match="already decided"):
        services.membership_approve(application=share.application, actor=carol)
    assert Share.objects.filter(user=dave).count() == 1


def test_only_admins_with_the_permission_decide(db, alice, dave):
    with pytest.raises(services.MembershipError, match="may not decide"):
        services.membership_approve(application=pending_application(dave), actor=alice)


def test_decline_needs_a_reason_and_emails_it(
    db, carol, dave, mailoutbox, django_capture_on_commit_callbacks
):
    with pytest.raises(services.MembershipError, match="Say why"):
        services.membership_decline(application=pending_application(dave), actor=carol, reason=" ")
    with django_capture_on_commit_callbacks(execute=True):
        services.membership_decline(
            application=pending_application(dave), actor=carol, reason="We are full this year."
        )
    assert Membership.objects.get(user=dave).status == MembershipStatus.DECLINED
    (mail,) = mailoutbox
    assert mail.to == ["dave@example.org"]
    assert "We are full this year." in mail.body
    assert mail.alternatives[0][1] == "text/html"
    assert "We are full this year." in mail.alternatives[0][0]


def test_decision_email_task_is_safe_to_run_twice(db, carol, dave, mailoutbox):
    from panel.tasks import send_application_decision

    application = pending_application(dave)
    services.membership_approve(application=application, actor=carol)
    assert send_application_decision(application.pk) is True
    assert send_application_decision(application.pk) is False
    assert len(mailoutbox) == 1


def test_the_database_allows_one_active_share_per_person(db, alice):
    share = Share.objects.get(user=alice)
    with pytest.raises(IntegrityError), transaction.atomic():
        Share.objects.create(
            user=alice,
            application=Application.objects.create(
                user=alice,
                name="again",
                statement="x",
                statutes=share.application.statutes,
                agreed_at=share.issued_at,
                state="approved",
                decided_at=share.issued_at,
            ),
        )


def test_leave_cancels_the_share_and_keeps_history(db, alice):
    services.membership_leave(user=alice, actor=alice, reason="moving away")
    share = Share.objects.get(user=alice)
    assert share.cancelled_at is not None
    assert Membership.objects.get(user=alice).status == MembershipStatus.LEFT
    statuses = list(
        MembershipEvent.objects.filter(membership__user=alice).values_list("to_status", flat=True)
    )
    assert statuses == ["applicant", "member", "left"]
    assert AuditEntry.objects.filter(owner=alice, action="share.cancelled").exists()


def test_a_person_who_left_may_apply_again_and_gets_a_new_share(db, alice, carol, statutes):
    services.membership_leave(user=alice, actor=alice)
    again = services.membership_apply(user=alice, name="Alice", statement="back", statutes=statutes)
    services.membership_approve(application=again, actor=carol)
    assert Share.objects.filter(user=alice).count() == 2
    assert Share.objects.filter(user=alice, cancelled_at__isnull=True).count() == 1


def test_suspend_and_reinstate(db, alice, carol):
    with pytest.raises(services.MembershipError, match="Say why"):
        services.membership_suspend(user=alice, actor=carol, reason="")
    services.membership_suspend(user=alice, actor=carol, reason="unpaid invoices")
    assert Membership.objects.get(user=alice).status == MembershipStatus.SUSPENDED
    with pytest.raises(services.MembershipError, match="cannot apply while"):
        services.membership_apply(
            user=alice,
            name="A",
            statement="x",
            statutes=Share.objects.get(user=alice).application.statutes,
        )
    services.membership_reinstate(user=alice, actor=carol)
    assert Membership.objects.get(user=alice).status == MembershipStatus.MEMBER


def test_members_cannot_suspend_each_other(db, alice, bob):
    with pytest.raises(services.MembershipError, match="may not suspend"):
        services.membership_suspend(user=bob, actor=alice, reason="dislike")


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_approvals_create_one_share(carol, statutes):
    """Two admins press Approve at the same moment: one share, one clear refusal."""
    assert connection.vendor == "postgresql"
    applicant = make_user()
    application = services.membership_apply(
        user=applicant, name="Eve", statement="hi", statutes=statutes
    )
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def approve() -> None:
        try:
            barrier.wait()
            services.membership_approve(application=application, actor=carol)
            outcomes.append("approved")
        except services.MembershipError:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=approve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["approved", "refused"]
    assert Share.objects.filter(user=applicant).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_share_index_holds_even_if_code_skips_the_guard(carol, statutes):
    """Two writers that bypass the service both try to insert an active share."""
    applicant = make_user()
    first = services.membership_apply(user=applicant, name="F", statement="x", statutes=statutes)
    Application.objects.filter(pk=first.pk).update(state="approved", decided_at=first.agreed_at)
    second = Application.objects.create(
        user=applicant,
        name="F",
        statement="x",
        statutes=statutes,
        agreed_at=first.agreed_at,
        state="approved",
        decided_at=first.agreed_at,
    )
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def insert(app_id: int) -> None:
        try:
            with transaction.atomic():
                barrier.wait()
                Share.objects.create(user=applicant, application_id=app_id)
        except IntegrityError as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=insert, args=(a,)) for a in (first.pk, second.pk)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1
    assert Share.objects.filter(user=applicant).count() == 1


def test_apply_page_flow(client, statutes):
    user = make_user()
    client.force_login(user)
    page = client.get(reverse("membership_apply"))
    assert statutes.text[:40] in page.content.decode()
    missing = client.post(
        reverse("membership_apply"),
        {"name": "", "statement": "", "statutes_version": statutes.version},
    )
    assert missing.status_code == 200
    body = missing.content.decode()
    assert 'aria-invalid="true"' in body
    assert "This field is required." in body
    done = client.post(
        reverse("membership_apply"),
        {"name": "Erin", "statement": "Hi", "agree": "on", "statutes_version": statutes.version},
    )
    assert done.status_code == 302
    assert Membership.objects.get(user=user).status == MembershipStatus.APPLICANT


def test_admin_queue_approves_and_declines(client, carol, dave, statutes):
    client.force_login(carol)
    queue = client.get(reverse("staff_applications"))
    assert "Dave Applicant" in queue.content.decode()
    app = pending_application(dave)
    bad = client.post(
        reverse("staff_application_decide", args=[app.pk]), {f"a{app.pk}-decision": "declined"}
    )
    assert bad.status_code == 422
    assert "Say why the application is declined." in bad.content.decode()
    ok = client.post(
        reverse("staff_application_decide", args=[app.pk]),
        {f"a{app.pk}-decision": "approved"},
        HTTP_HX_REQUEST="true",
    )
    assert ok.status_code == 200
    assert "share No." in ok.content.decode()
    assert Membership.objects.get(user=dave).status == MembershipStatus.MEMBER


def test_member_cannot_use_the_admin_queue(client, alice, dave):
    client.force_login(alice)
    assert client.get(reverse("staff_applications")).status_code == 403
    app = pending_application(dave)
    response = client.post(
        reverse("staff_application_decide", args=[app.pk]), {f"a{app.pk}-decision": "approved"}
    )
    assert response.status_code == 403
    assert Membership.objects.get(user=dave).status == MembershipStatus.APPLICANT


def test_approval_email_has_text_and_html(
    db, carol, dave, smtp, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        share = services.membership_approve(application=pending_application(dave), actor=carol)
    text, html = text_and_html(smtp.wait_for("dave@example.org", subject_has="member"))
    assert f"share No. {share.pk}" in text
    assert f"share No. {share.pk}" in html
