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
        seed_hosting(users["alice@demo.coop"][0])
        seed_calls(users["alice@demo.coop"][0], users["carol@demo.coop"][0])
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


NGINX_DEMO = """# The demo's own nginx: on a high port, serving the local node's sites.
{user_line}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    access_log {root}/logs/nginx-access.log;
    log_format panel '$remote_addr [$time_local] "$host" "$request" $status $bytes_sent';
    server_names_hash_bucket_size 128;
    server {{ listen {port} default_server; server_name _; return 404; }}
    include {root}/vhosts/*.conf;
}}
"""


def seed_hosting(member: User) -> None:
    """A local node (the agent runs here, no SSH) with an unprivileged nginx, and one site.

    Sites are named *.localhost, which browsers resolve to this machine, so a site created in
    the demo opens at http://NAME.localhost:PORT/.
    """
    import os

    from provisioning.models import Node, NodeStatus, Site
    from provisioning.services import site_create

    root = settings.STATE_DIR / "hosting"
    port = int(os.environ.get("DEMO_SITES_PORT", "8081"))
    for sub in ("sites", "vhosts", "agent", "backups", "logs", "keys", "php", "pages", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    # Run as root (as here, in a container), nginx would hand its workers to "nobody", who
    # cannot read a home directory; the demo keeps them as the user who runs it.
    user_line = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_DEMO.format(root=root, port=port, user_line=user_line))
    agent = {
        "privileged": False,
        "sites_root": str(root / "sites"),
        "vhost_dir": str(root / "vhosts"),
        "state_dir": str(root / "agent"),
        "backup_dir": str(root / "backups"),
        "log_dir": str(root / "logs"),
        "keys_dir": str(root / "keys"),
        "php_pool_dir": str(root / "php"),
        "pages_dir": str(root / "pages"),
        "http_port": port,
        "nginx": ["nginx", "-c", str(conf), "-p", str(root)],
        "php_fpm_reload": ["true"],
        "reload_settle_s": 0.1,
    }
    config = root / "agent.json"
    config.write_text(json.dumps(agent, indent=1))
    Node.objects.get_or_create(
        name="local",
        defaults={
            "transport": "local",
            "local_config": str(config),
            "status": NodeStatus.AVAILABLE,
            "capacity": 50,
            "monthly_cost": Decimal("20.00"),
            "cost_source": "demo: one small server",
        },
    )
    if not Site.objects.filter(member=member).exists():
        site_create(member=member, domain="alice.localhost")


DEMO_DECK = b"""prefix,destination,rate,increment,connect_fee
1,USA and Canada,0.006000,6/6,0
44,United Kingdom,0.009000,60/1,0
4420,London,0.008000,1/1,0
447,United Kingdom mobile,0.030000,30/6,0
49,Germany,0.007000,60/60,0
4915,Germany mobile,0.025000,30/6,0
4916,Germany mobile,0.025000,30/6,0
4917,Germany mobile,0.025000,30/6,0
4930,Berlin,0.005000,1/1,0
33,France,0.009000,60/60,0
34,Spain,0.009000,60/60,0
"""


def seed_calls(member: User, admin: User) -> None:
    """An access number, a carrier with a small deck, alice's verified phone, a few calls."""
    from decimal import Decimal as D

    from django.utils import timezone as tz

    from telephony import services as calls
    from telephony.models import AccessNumber, CallRecord, Carrier, Phone, RateDeck, Trunk

    access, _ = AccessNumber.objects.get_or_create(
        number="+4930900900", defaults={"city": "Berlin", "country": "DE"}
    )
    supplier, _ = Supplier.objects.get_or_create(name="Carrier One")
    carrier, _ = Carrier.objects.get_or_create(name="Carrier One", defaults={"supplier": supplier})
    Trunk.objects.get_or_create(
        name="carrier-one",
        defaults={"carrier": carrier, "dial_template": "PJSIP/{number}@carrier-one", "priority": 1},
    )
    if not RateDeck.objects.filter(carrier=carrier).exists():
        deck = calls.deck_upload(
            carrier=carrier,
            actor=admin,
            filename="carrier-one-2026.csv",
            content=DEMO_DECK,
            mapping=calls.PRESETS["standard"],
            effective_from=tz.now() - timedelta(days=120),
        )
        calls.deck_import(deck_id=deck.pk)
    phone = Phone.objects.filter(member=member).first() or calls.phone_add(
        member=member, number="+4915123456789"
    )
    Phone.objects.filter(pk=phone.pk, verified_at__isnull=True).update(
        verified_at=tz.now(), verification_code=""
    )
    if not calls.plan_for(member).pin_hash:
        calls.pin_set(member=member, pin="2468")
    for n, (digits, seconds) in enumerate(
        [("030123456", 312), ("00442079460123", 75), ("015112345678", 0)]
    ):
        uniqueid = f"demo-call-{n}"
        if CallRecord.objects.filter(uniqueid=uniqueid).exists():
            continue
        calls.call_authorize(
            uniqueid=uniqueid,
            member=member,
            caller=phone.number,
            access_number=access,
            digits=digits,
        )
        calls.call_settle(
            uniqueid=uniqueid,
            dial_status="ANSWER" if seconds else "NOANSWER",
            answered_at=D(1000),
            ended_at=D(1000 + seconds),
        )
        CallRecord.objects.filter(uniqueid=uniqueid).update(
            started_at=tz.now() - timedelta(days=n + 1, hours=3)
        )
