"""Lists, subscribers and their consent: signup, confirmation, unsubscribe."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core import signing
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from newsletters import tokens, validation
from newsletters.models import (
    ConsentEvent,
    ConsentKind,
    MailingList,
    Subscriber,
    SubscriberStatus,
)
from newsletters.services.common import NewsletterError, _require_member, _valid
from panel.audit import audit_record, snapshot
from panel.models import User
from panel.tasking import enqueue_on_commit

# Lists -----------------------------------------------------------------------------------

LIST_FIELDS = (
    "name",
    "slug",
    "description",
    "domain",
    "from_name",
    "from_local",
    "signup_open",
    "archive_public",
)


def _list_values(member: User, values: dict[str, Any]) -> dict[str, Any]:
    domain = values["domain"]
    if domain.member_id != member.pk:
        raise NewsletterError(_("That domain is not yours."))
    if not domain.verified:
        raise NewsletterError(
            _("%(name)s is not verified yet; publish its DNS records and check it.")
            % {"name": domain.name}
        )
    return {
        "name": _valid(validation.header_text, values["name"], _("The name"), max_length=100),
        "slug": _valid(validation.slug, values["slug"]),
        "description": values.get("description", "")[:2000],
        "domain": domain,
        "from_name": _valid(
            validation.header_text, values["from_name"], _("The From name"), max_length=100
        ),
        "from_local": _valid(validation.local_part, values["from_local"]),
        "signup_open": bool(values.get("signup_open", True)),
        "archive_public": bool(values.get("archive_public", False)),
    }


@transaction.atomic
def list_create(*, member: User, **values: Any) -> MailingList:
    _require_member(member)
    clean = _list_values(member, values)
    try:
        with transaction.atomic():
            mlist = MailingList.objects.create(member=member, **clean)
    except IntegrityError:
        raise NewsletterError(_("That name or address is already taken.")) from None
    audit_record(
        actor=member,
        action="newsletters.list_created",
        obj=mlist,
        owner=member,
        after=snapshot(mlist, LIST_FIELDS),
    )
    return mlist


@transaction.atomic
def list_update(*, mlist: MailingList, actor: User, **values: Any) -> MailingList:
    locked = MailingList.objects.select_for_update().get(pk=mlist.pk)
    before = snapshot(locked, LIST_FIELDS)
    for field, value in _list_values(locked.member, values).items():
        setattr(locked, field, value)
    try:
        with transaction.atomic():
            locked.save()
    except IntegrityError:
        raise NewsletterError(_("That name or address is already taken.")) from None
    audit_record(
        actor=actor,
        action="newsletters.list_changed",
        obj=locked,
        owner=locked.member,
        before=before,
        after=snapshot(locked, LIST_FIELDS),
    )
    return locked


# Subscribers and consent -----------------------------------------------------------------


def _consent(
    subscriber: Subscriber, kind: str, *, source: str, ip: str | None = None, user_agent: str = ""
) -> ConsentEvent:
    return ConsentEvent.objects.create(
        subscriber=subscriber,
        kind=kind,
        ip=ip or None,
        user_agent=user_agent[:300],
        source=source[:300],
    )


def _locked_subscriber(mlist: MailingList, email: str, name: str) -> Subscriber:
    # Insert-or-nothing, then lock: two signups of one address cannot both create it.
    Subscriber.objects.bulk_create(
        [Subscriber(list=mlist, email=email, name=name)], ignore_conflicts=True
    )
    return Subscriber.objects.select_for_update().get(list=mlist, email=email)


@transaction.atomic
def subscribe_request(
    *, mlist: MailingList, email: str, name: str, ip: str | None, user_agent: str, source: str
) -> Subscriber:
    """A signup on the public form: pending until the emailed link is followed.

    A confirmed address is left alone and gets no mail; the form answers the same either
    way, so it does not tell strangers who is subscribed.
    """
    address = _valid(validation.normalise_email, email)
    clean_name = _valid(validation.header_text, name, _("The name"), max_length=100)
    subscriber = _locked_subscriber(mlist, address, clean_name)
    if subscriber.status == SubscriberStatus.CONFIRMED:
        return subscriber
    subscriber.status = SubscriberStatus.PENDING
    subscriber.status_changed_at = timezone.now()
    if clean_name:
        subscriber.name = clean_name
    subscriber.save(update_fields=["status", "status_changed_at", "name"])
    event = _consent(subscriber, ConsentKind.SUBSCRIBE, source=source, ip=ip, user_agent=user_agent)
    from newsletters import tasks

    enqueue_on_commit(tasks.send_confirmation, subscriber.pk, event.pk)
    return subscriber


CONFIRM_SALT = "newsletters.confirm"
CONFIRM_MAX_AGE = timedelta(days=7)


def confirm_token(subscriber: Subscriber, event_id: int) -> str:
    return signing.dumps([subscriber.pk, event_id], salt=CONFIRM_SALT)


def subscriber_from_confirm_token(token: str) -> Subscriber:
    try:
        subscriber_id, _event = signing.loads(token, salt=CONFIRM_SALT, max_age=CONFIRM_MAX_AGE)
    except signing.SignatureExpired:
        raise NewsletterError(_("This link has expired; sign up again to get a new one.")) from None
    except (signing.BadSignature, ValueError, TypeError):
        raise NewsletterError(_("This link is not valid.")) from None
    try:
        return Subscriber.objects.select_related("list").get(pk=subscriber_id)
    except Subscriber.DoesNotExist:
        raise NewsletterError(_("This link is not valid.")) from None


@transaction.atomic
def subscription_confirm(
    *, subscriber: Subscriber, ip: str | None, user_agent: str, source: str
) -> Subscriber:
    locked = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
    if locked.status != SubscriberStatus.PENDING:
        return locked
    now = timezone.now()
    locked.status = SubscriberStatus.CONFIRMED
    locked.confirmed_at = now
    locked.status_changed_at = now
    locked.save(update_fields=["status", "confirmed_at", "status_changed_at"])
    _consent(locked, ConsentKind.CONFIRM, source=source, ip=ip, user_agent=user_agent)
    return locked


@transaction.atomic
def unsubscribe(
    *,
    subscriber: Subscriber,
    source: str,
    ip: str | None = None,
    user_agent: str = "",
    actor: User | None = None,
) -> Subscriber:
    """Take an address off a list at once; repeating it is harmless (one-click clients retry)."""
    locked = Subscriber.objects.select_for_update().select_related("list").get(pk=subscriber.pk)
    before = locked.status
    if before not in (SubscriberStatus.PENDING, SubscriberStatus.CONFIRMED):
        return locked
    locked.status = SubscriberStatus.UNSUBSCRIBED
    locked.status_changed_at = timezone.now()
    locked.save(update_fields=["status", "status_changed_at"])
    _consent(locked, ConsentKind.UNSUBSCRIBE, source=source, ip=ip, user_agent=user_agent)
    if actor is not None:
        audit_record(
            actor=actor,
            action="newsletters.subscriber_removed",
            obj=locked,
            owner=locked.list.member,
            before={"status": before},
            after={"status": locked.status},
        )
    return locked


def unsubscribe_by_token(
    *, token: str, source: str, ip: str | None = None, user_agent: str = ""
) -> Subscriber:
    parsed = tokens.parse_unsubscribe_token(token)
    if parsed is None:
        raise NewsletterError(_("This unsubscribe link is not valid."))
    try:
        subscriber = Subscriber.objects.select_related("list").get(pk=parsed[0])
    except Subscriber.DoesNotExist:
        raise NewsletterError(_("This unsubscribe link is not valid.")) from None
    return unsubscribe(subscriber=subscriber, source=source, ip=ip, user_agent=user_agent)
