"""Write path of the commune core: one keyword-only, atomic function per business action."""

from panel.services.membership import (
    MembershipError,
    membership_apply,
    membership_approve,
    membership_decline,
    membership_leave,
    membership_reinstate,
    membership_suspend,
    statutes_publish,
)

__all__ = [
    "MembershipError",
    "membership_apply",
    "membership_approve",
    "membership_decline",
    "membership_leave",
    "membership_reinstate",
    "membership_suspend",
    "statutes_publish",
]
