"""Models of the commune core, by topic: people and membership (core), the books (ledger)."""

from panel.models.core import (
    Application,
    ApplicationState,
    AuditEntry,
    Heartbeat,
    Membership,
    MembershipEvent,
    MembershipStatus,
    Share,
    Statutes,
    User,
    UserManager,
)

__all__ = [
    "Application",
    "ApplicationState",
    "AuditEntry",
    "Heartbeat",
    "Membership",
    "MembershipEvent",
    "MembershipStatus",
    "Share",
    "Statutes",
    "User",
    "UserManager",
]
