"""Write path of the newsletters: one keyword-only, atomic function per business action."""

from newsletters.services.bounces import (
    bounce_record,
    complaint_record,
    report_receive,
)
from newsletters.services.campaigns import (
    campaign_cancel,
    campaign_create,
    campaign_pause,
    campaign_resume,
    campaign_schedule,
    campaign_start,
    campaign_test_send,
    campaign_unschedule,
    campaign_update,
)
from newsletters.services.common import NewsletterError
from newsletters.services.domains import (
    domain_add,
    domain_check,
    domain_override,
    domain_remove,
    holder_of,
    send_domain_lost_notice,
)
from newsletters.services.imports import IMPORT_MAX_BYTES, import_run, import_start
from newsletters.services.lists import (
    LIST_FIELDS,
    list_create,
    list_update,
    subscribe_request,
    subscriber_from_confirm_token,
    subscription_confirm,
    unsubscribe,
    unsubscribe_by_token,
)
from newsletters.services.retention import retention_purge
from newsletters.services.sending import (
    SendOutcome,
    campaign_prepare,
    campaign_send,
    maintenance,
    return_expired_leases,
    revive_senders,
    start_due_campaigns,
)
from newsletters.services.single import send_confirmation, send_import_confirmations, send_test

__all__ = [
    "IMPORT_MAX_BYTES",
    "LIST_FIELDS",
    "NewsletterError",
    "SendOutcome",
    "bounce_record",
    "campaign_cancel",
    "campaign_create",
    "campaign_pause",
    "campaign_prepare",
    "campaign_resume",
    "campaign_schedule",
    "campaign_send",
    "campaign_start",
    "campaign_test_send",
    "campaign_unschedule",
    "campaign_update",
    "complaint_record",
    "domain_add",
    "domain_check",
    "domain_override",
    "domain_remove",
    "holder_of",
    "import_run",
    "import_start",
    "list_create",
    "list_update",
    "maintenance",
    "report_receive",
    "retention_purge",
    "return_expired_leases",
    "revive_senders",
    "send_confirmation",
    "send_domain_lost_notice",
    "send_import_confirmations",
    "send_test",
    "start_due_campaigns",
    "subscribe_request",
    "subscriber_from_confirm_token",
    "subscription_confirm",
    "unsubscribe",
    "unsubscribe_by_token",
]
