"""Load the demo co-op: an admin, two members, one applicant. Safe to run again."""

from __future__ import annotations

import json
import secrets
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from panel import services
from panel.models import (
    CostRate,
    Membership,
    PeriodState,
    Share,
    Supplier,
    SupplierInvoice,
    User,
)
from panel.selectors import current_statutes
from panel.services import closing, ledger
from panel.services.ledger import UsageInput

STATUTES = """§1 Name and purpose. The co-op runs web hosting, newsletter lists and a dial-in
telephone service for its members, on servers it owns.

§2 Membership. Any person may apply. The admins decide on each application and give reasons
when they decline. Every member holds exactly one share, and only one.

§3 At cost. Every service is billed at what it costs the co-op, without markup.

§4 The commune. When a billing period closes, what is left over (or missing) belongs to the
commune and is split equally among the members, one share each.

§5 Leaving. A member may leave at any time; the share is cancelled and the history kept."""

PEOPLE = [
    # email, name, role
    ("carol@demo.coop", "Carol Admin", "admin"),
    ("alice@demo.coop", "Alice Example", "member"),
    ("bob@demo.coop", "Bob Example", "member"),
    ("dave@demo.coop", "Dave Applicant", "applicant"),
]


class Command(BaseCommand):
    help = "Create the demo co-op (idempotent); prints the logins."

    def handle(self, *args: Any, **options: Any) -> None:
        logins_file = settings.STATE_DIR / "demo-logins.json"
        logins: dict[str, str] = json.loads(logins_file.read_text()) if logins_file.exists() else {}
        with transaction.atomic():
            users = {}
            for email, name, role in PEOPLE:
                password = logins.setdefault(email, secrets.token_urlsafe(9))
                user = User.objects.filter(email=email).first()
                if user is None:
                    first, last = name.split(" ", 1)
                    create = (
                        User.objects.create_superuser
                        if role == "admin"
                        else User.objects.create_user
                    )
                    user = create(email=email, password=password, first_name=first, last_name=last)
                    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
                users[email] = (user, name, role)
            admin = users["carol@demo.coop"][0]
            statutes = current_statutes() or services.statutes_publish(
                actor=admin, title="Statutes of the Commune Co-op", text=STATUTES
            )
            for user, name, role in users.values():
                if role == "admin" or Membership.objects.filter(user=user).exists():
                    continue
                application = services.membership_apply(
                    user=user,
                    name=name,
                    statement="I want to host my projects with people I trust.",
                    statutes=statutes,
                )
                if role == "member":
                    services.membership_approve(application=application, actor=admin)
        seed_books(
            users["carol@demo.coop"][0], [users[e][0] for e in ("alice@demo.coop", "bob@demo.coop")]
        )
        logins_file.parent.mkdir(parents=True, exist_ok=True)
        logins_file.write_text(json.dumps(logins, indent=1))
        logins_file.chmod(0o600)
        for email, _name, role in PEOPLE:
            self.stdout.write(f"  {role:<10} {email:<18} password: {logins[email]}")


def _months_back(today: date, n: int) -> date:
    first = today.replace(day=1)
    for _ in range(n):
        first = (first - timedelta(days=1)).replace(day=1)
    return first


def seed_books(admin: User, members: list[User]) -> None:
    """A few months of usage, payments and supplier invoices; the oldest month closed.

    Dates follow today, so the demo always shows recent months. Every step is idempotent
    (source keys), so running the seed again changes nothing.
    """
    today = timezone.localdate()
    first = _months_back(today, 3)
    start = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    # The demo members have been members since before the first month shown.
    Share.objects.filter(user__in=members, issued_at__gt=start).update(
        issued_at=start - timedelta(days=30)
    )
    hosting, _ = Supplier.objects.get_or_create(name="Serverhaus GmbH")
    carrier, _ = Supplier.objects.get_or_create(name="Carrier One")
    relay, _ = Supplier.objects.get_or_create(name="Relay Co")
    rates = {}
    for service, kind, unit, cost, supplier, ref in [
        ("hosting", "disk", "GB-month", "0.040000", hosting, "Serverhaus price list 2026"),
        ("hosting", "transfer", "GB", "0.001000", hosting, "Serverhaus price list 2026"),
        ("newsletters", "message", "message", "0.000090", relay, "Relay Co offer 2026-03"),
        ("calls", "call", "minute", "0.012300", carrier, "Carrier One deck 2026-05"),
    ]:
        rate = CostRate.objects.filter(service=service, kind=kind).first()
        if rate is None:
            rate = ledger.cost_rate_set(
                actor=admin,
                service=service,
                kind=kind,
                unit=unit,
                unit_cost=Decimal(cost),
                supplier=supplier,
                reference=ref,
                valid_from=first - timedelta(days=60),
            )
        rates[(service, kind)] = rate
    for n, member in enumerate(members):
        ledger.payment_record(
            actor=admin,
            member=member,
            amount=Decimal("20.00") - 5 * n,
            received_on=first,
            reference=f"Top-up {ledger.payment_reference_for(member.pk)}",
            source_key=f"demo-topup-{member.pk}",
        )
    events = []
    day = first
    while day <= today:
        noon = timezone.make_aware(datetime.combine(day, datetime.min.time())) + timedelta(hours=12)
        for n, member in enumerate(members):
            plan = [
                ("hosting", "disk", Decimal(12 + 6 * n) / 30),  # GB-months per day
                ("hosting", "transfer", Decimal((day.day * 7 + n * 13) % 40 + 3) / 10),
            ]
            if day.weekday() == 0 and n == 0:
                plan.append(("newsletters", "message", Decimal(1200)))
            if (day.day + n) % 3 == 0:
                plan.append(("calls", "call", Decimal((day.day * 11 + n) % 25 + 2)))
            for service, kind, quantity in plan:
                rate = rates[(service, kind)]
                events.append(
                    UsageInput(
                        member_id=member.pk,
                        service=service,
                        kind=kind,
                        quantity=quantity.quantize(Decimal("0.000001")),
                        unit=rate.unit,
                        unit_cost=rate.unit_cost,
                        cost_source=rate.source_label,
                        occurred_at=noon,
                        source_key=f"demo-{member.pk}-{service}-{kind}-{day.isoformat()}",
                        cost_rate_id=rate.pk,
                    )
                )
        day += timedelta(days=1)
    ledger.record_usage_batch(events=events)
    for months_ago in (3, 2, 1):
        month = _months_back(today, months_ago)
        period = ledger.period_for(month)
        if period.state != PeriodState.OPEN:
            continue
        for supplier, service, amount in [
            (hosting, "hosting", "0.90"),
            (carrier, "calls", "1.20"),
            (relay, "newsletters", "0.25"),
        ]:
            reference = f"{supplier.name[:3].upper()}-{month:%Y%m}"
            if not SupplierInvoice.objects.filter(supplier=supplier, reference=reference).exists():
                ledger.supplier_invoice_record(
                    actor=admin,
                    supplier=supplier,
                    service=service,
                    period=period,
                    reference=reference,
                    invoice_date=period.ends_on - timedelta(days=1),
                    amount=Decimal(amount),
                )
    oldest = ledger.period_for(first)
    if oldest.state == PeriodState.OPEN:
        closing.period_close_start(period=oldest, actor=admin)
        closing.period_close_run(period_id=oldest.pk)
