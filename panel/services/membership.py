"""Membership: applying, deciding, suspending, leaving; statutes versions."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from panel.audit import audit_record, snapshot
from panel.models import (
    Application,
    ApplicationState,
    Membership,
    MembershipEvent,
    MembershipStatus,
    Share,
    Statutes,
    User,
)
from panel.tasking import enqueue_on_commit
from panel.tasks import send_application_decision

MEMBERSHIP_FIELDS = ("status", "name", "status_since")
APPLICATION_FIELDS = ("state", "name", "statement", "statutes", "decided_by", "decision_reason")

# Who may move from which status to which; anything else is refused.
_TRANSITIONS: dict[str | None, set[str]] = {
    None: {MembershipStatus.APPLICANT},
    MembershipStatus.APPLICANT: {MembershipStatus.MEMBER, MembershipStatus.DECLINED},
    MembershipStatus.DECLINED: {MembershipStatus.APPLICANT},
    MembershipStatus.MEMBER: {MembershipStatus.SUSPENDED, MembershipStatus.LEFT},
    MembershipStatus.SUSPENDED: {MembershipStatus.MEMBER, MembershipStatus.LEFT},
    MembershipStatus.LEFT: {MembershipStatus.APPLICANT},
}


class MembershipError(Exception):
    """A membership action that the current state does not allow; the message is for people."""


def _transition(
    *, membership: Membership, to: str, actor: User | None, reason: str = ""
) -> MembershipEvent:
    """Move a locked membership row to a new status, with its history event and audit row."""
    current = membership.status or None
    if to not in _TRANSITIONS[current]:
        raise MembershipError(
            _("A membership that is %(current)s cannot become %(to)s.")
            % {"current": current or _("not applied"), "to": to}
        )
    before = snapshot(membership, MEMBERSHIP_FIELDS) if membership.pk else None
    membership.status = to
    membership.status_since = timezone.now()
    membership.save()
    event = MembershipEvent.objects.create(
        membership=membership,
        from_status=current or "",
        to_status=to,
        at=membership.status_since,
        actor=actor,
        reason=reason,
    )
    audit_record(
        actor=actor,
        action=f"membership.{to}",
        obj=membership,
        owner=membership.user,
        before=before,
        after=snapshot(membership, MEMBERSHIP_FIELDS),
        note=reason,
    )
    return event


@transaction.atomic
def statutes_publish(*, actor: User, title: str, text: str) -> Statutes:
    """Publish a new version of the statutes; earlier versions stay as they were agreed to."""
    last = Statutes.objects.select_for_update().order_by("-version").first()
    statutes = Statutes.objects.create(
        version=(last.version + 1) if last else 1, title=title, text=text, published_by=actor
    )
    audit_record(
        actor=actor,
        action="statutes.published",
        obj=statutes,
        owner=None,
        after=snapshot(statutes, ("version", "title", "text")),
    )
    return statutes


@transaction.atomic
def membership_apply(*, user: User, name: str, statement: str, statutes: Statutes) -> Application:
    """A signed-up person applies, agreeing to one version of the statutes."""
    latest = Statutes.objects.order_by("-version").first()
    if latest is None or latest.pk != statutes.pk:
        raise MembershipError(_("The statutes changed meanwhile; please read the current version."))
    membership = Membership.objects.select_for_update().filter(user=user).first()
    if membership is None:
        membership = Membership(user=user, name=name)
    elif membership.status not in (MembershipStatus.DECLINED, MembershipStatus.LEFT):
        raise MembershipError(
            _("You cannot apply while your membership is %(status)s.")
            % {"status": membership.get_status_display()}
        )
    membership.name = name
    try:
        with transaction.atomic():
            application = Application.objects.create(
                user=user,
                name=name,
                statement=statement,
                statutes=statutes,
                agreed_at=timezone.now(),
            )
    except IntegrityError:
        raise MembershipError(
            _("You already have an application waiting for a decision.")
        ) from None
    _transition(membership=membership, to=MembershipStatus.APPLICANT, actor=user)
    audit_record(
        actor=user,
        action="application.submitted",
        obj=application,
        owner=user,
        after=snapshot(application, APPLICATION_FIELDS),
    )
    return application


def _decide(*, application: Application, actor: User, state: str, reason: str) -> Application:
    """Claim a pending application for one decision.

    The guarded UPDATE is the lock: of two admins deciding at once, the second finds no
    pending row and is told so, instead of both issuing a share.
    """
    now = timezone.now()
    claimed = Application.objects.filter(pk=application.pk, state=ApplicationState.PENDING).update(
        state=state, decided_at=now, decided_by=actor, decision_reason=reason
    )
    if not claimed:
        raise MembershipError(_("This application was already decided."))
    before = snapshot(application, APPLICATION_FIELDS)
    application.refresh_from_db()
    audit_record(
        actor=actor,
        action=f"application.{state}",
        obj=application,
        owner=application.user,
        before=before,
        after=snapshot(application, APPLICATION_FIELDS),
        note=reason,
    )
    return application


@transaction.atomic
def membership_approve(*, application: Application, actor: User) -> Share:
    """Approve an application: the person becomes a member holding exactly one share."""
    if not actor.has_perm("panel.decide_application"):
        raise MembershipError(_("You may not decide applications."))
    application = _decide(
        application=application, actor=actor, state=ApplicationState.APPROVED, reason=""
    )
    membership = Membership.objects.select_for_update().get(user=application.user)
    membership.name = application.name
    _transition(membership=membership, to=MembershipStatus.MEMBER, actor=actor)
    share = Share.objects.create(user=application.user, application=application)
    audit_record(
        actor=actor,
        action="share.issued",
        obj=share,
        owner=application.user,
        after=snapshot(share, ("user", "issued_at", "cancelled_at")),
    )
    enqueue_on_commit(send_application_decision, application.pk)
    return share


@transaction.atomic
def membership_decline(*, application: Application, actor: User, reason: str) -> Application:
    """Decline an application; the reason is required and is sent to the applicant."""
    if not actor.has_perm("panel.decide_application"):
        raise MembershipError(_("You may not decide applications."))
    reason = reason.strip()
    if not reason:
        raise MembershipError(_("Say why the application is declined."))
    application = _decide(
        application=application, actor=actor, state=ApplicationState.DECLINED, reason=reason
    )
    membership = Membership.objects.select_for_update().get(user=application.user)
    _transition(membership=membership, to=MembershipStatus.DECLINED, actor=actor, reason=reason)
    enqueue_on_commit(send_application_decision, application.pk)
    return application


@transaction.atomic
def membership_suspend(*, user: User, actor: User, reason: str) -> Membership:
    if not actor.has_perm("panel.change_membership"):
        raise MembershipError(_("You may not suspend members."))
    if not reason.strip():
        raise MembershipError(_("Say why the membership is suspended."))
    membership = Membership.objects.select_for_update().get(user=user)
    _transition(membership=membership, to=MembershipStatus.SUSPENDED, actor=actor, reason=reason)
    return membership


@transaction.atomic
def membership_reinstate(*, user: User, actor: User, reason: str = "") -> Membership:
    if not actor.has_perm("panel.change_membership"):
        raise MembershipError(_("You may not reinstate members."))
    membership = Membership.objects.select_for_update().get(user=user)
    if membership.status != MembershipStatus.SUSPENDED:
        raise MembershipError(_("Only a suspended membership can be reinstated."))
    _transition(membership=membership, to=MembershipStatus.MEMBER, actor=actor, reason=reason)
    return membership


@transaction.atomic
def membership_leave(*, user: User, actor: User, reason: str = "") -> Membership:
    """End a membership: the share is cancelled, never deleted, and all history stays."""
    if actor != user and not actor.has_perm("panel.change_membership"):
        raise MembershipError(_("You may not end another person's membership."))
    membership = Membership.objects.select_for_update().filter(user=user).first()
    if membership is None:
        raise MembershipError(_("There is no membership to end."))
    _transition(membership=membership, to=MembershipStatus.LEFT, actor=actor, reason=reason)
    share = Share.objects.select_for_update().get(user=user, cancelled_at__isnull=True)
    before = snapshot(share, ("user", "issued_at", "cancelled_at"))
    share.cancelled_at = membership.status_since
    share.save(update_fields=["cancelled_at"])
    audit_record(
        actor=actor,
        action="share.cancelled",
        obj=share,
        owner=user,
        before=before,
        after=snapshot(share, ("user", "issued_at", "cancelled_at")),
        note=reason,
    )
    return membership
