"""Read path of the commune core: every query a page needs, scoped to who asks."""

from panel.selectors.core import (
    Dashboard,
    application_for_decision,
    application_of,
    applications_of,
    audit_entries_for,
    current_statutes,
    dashboard_for,
    heartbeat_at,
    member_count,
    membership_of,
    pending_applications,
)

__all__ = [
    "Dashboard",
    "application_for_decision",
    "application_of",
    "applications_of",
    "audit_entries_for",
    "current_statutes",
    "dashboard_for",
    "heartbeat_at",
    "member_count",
    "membership_of",
    "pending_applications",
]
