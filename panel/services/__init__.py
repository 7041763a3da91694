"""Write path of the commune core: one keyword-only, atomic function per business action."""

from panel.services.ledger import (
    InsufficientCredit,
    LedgerError,
    UsageConflict,
    UsageInput,
    credit_hold,
    credit_release,
    credit_settle,
    record_usage,
    record_usage_batch,
)
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

# Service apps report usage and hold credit through these, and nothing else of the ledger.
__all__ = [
    "InsufficientCredit",
    "LedgerError",
    "MembershipError",
    "UsageConflict",
    "UsageInput",
    "credit_hold",
    "credit_release",
    "credit_settle",
    "membership_apply",
    "membership_approve",
    "membership_decline",
    "membership_leave",
    "membership_reinstate",
    "membership_suspend",
    "record_usage",
    "record_usage_batch",
    "statutes_publish",
]
