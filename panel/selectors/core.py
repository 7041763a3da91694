"""Reads about people, membership and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from panel.models import (
    Application,
    ApplicationState,
    AuditEntry,
    Heartbeat,
    MemberBalance,
    Membership,
    MembershipStatus,
    Share,
    Statutes,
    User,
)


def current_statutes() -> Statutes | None:
    return Statutes.objects.order_by("-version").first()


def membership_of(user: User) -> Membership | None:
    return Membership.objects.filter(user=user).first()


def application_of(*, user: User, pk: int) -> Application:
    """One of the user's own applications; another person's is a 404."""
    return get_object_or_404(Application.objects.select_related("statutes"), pk=pk, user=user)


def applications_of(user: User) -> QuerySet[Application]:
    return Application.objects.filter(user=user).select_related("statutes")


def audit_entries_for(user: User) -> QuerySet[AuditEntry]:
    """Entries about the user's own things, including what admins did to them."""
    return AuditEntry.objects.filter(owner=user).order_by("-at", "-id")


def pending_applications() -> QuerySet[Application]:
    return (
        Application.objects.filter(state=ApplicationState.PENDING)
        .select_related("user", "statutes")
        .order_by("submitted_at", "id")
    )


def application_for_decision(pk: int) -> Application:
    return get_object_or_404(Application.objects.select_related("user"), pk=pk)


def member_count() -> int:
    return Membership.objects.filter(status=MembershipStatus.MEMBER).count()


@dataclass(frozen=True)
class Dashboard:
    membership: Membership | None
    share: Share | None
    pending_application: Application | None
    last_decision: Application | None
    recent_activity: list[AuditEntry]
    applications_waiting: int | None
    balance: MemberBalance


def dashboard_for(user: User) -> Dashboard:
    """Everything the dashboard shows, in a fixed, small number of queries."""
    membership = membership_of(user)
    share = Share.objects.filter(user=user, cancelled_at__isnull=True).first()
    applications = list(applications_of(user)[:2])
    pending = next((a for a in applications if a.state == ApplicationState.PENDING), None)
    decided = next((a for a in applications if a.state != ApplicationState.PENDING), None)
    activity = list(audit_entries_for(user)[:6])
    waiting = pending_applications().count() if user.has_perm("panel.decide_application") else None
    from panel.selectors.ledger import balance_of

    return Dashboard(membership, share, pending, decided, activity, waiting, balance_of(user))


def heartbeat_at(name: str) -> Heartbeat | None:
    return Heartbeat.objects.filter(name=name).first()
