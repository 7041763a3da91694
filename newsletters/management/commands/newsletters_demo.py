"""Demo newsletters for alice: a verified demo domain, a list with subscribers, a campaign.

Run by bin/demo after demo_seed; safe to run again. The campaign is started here and sent by
the demo's worker through the demo relay into its outbox, which staff see in the panel.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from newsletters import services
from newsletters.models import Campaign, MailingList, SendingDomain
from panel.models import User

DOMAIN = "alice-garden.localhost"
CAMPAIGN_SUBJECT = "Welcome to the garden notes"
TEXT = """Hello {{ name }},

the beans are in, the tomatoes are not (yet). This is the first issue of {{ list_name }}:
once a month, what grows in the commune garden and when you can help.

Past issues: {{ archive_url }}
Unsubscribe with one click: {{ unsubscribe_url }}
"""
HTML = """<h1>Garden notes</h1>
<p>Hello {{ name }},</p>
<p>the beans are in, the tomatoes are not (yet). This is the first issue of
<strong>{{ list_name }}</strong>: once a month, what grows in the commune garden.</p>
<p><a href="{{ archive_url }}">Past issues</a> · <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
"""


class Command(BaseCommand):
    help = "Create alice's demo newsletter (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        alice = User.objects.filter(email="alice@demo.coop").first()
        if alice is None:
            raise CommandError("run demo_seed first (alice@demo.coop is missing)")
        domain = SendingDomain.objects.filter(name=DOMAIN).first()
        if domain is None:
            domain = services.domain_add(member=alice, name=DOMAIN)
        # A *.localhost name has no public DNS to check: the demo marks it verified.
        SendingDomain.objects.filter(pk=domain.pk, verified_at__isnull=True).update(
            verified_at=timezone.now(), check_result={"demo": "verified without DNS"}
        )
        domain.refresh_from_db()
        mlist = MailingList.objects.filter(slug="garden-notes").first()
        if mlist is None:
            mlist = services.list_create(
                member=alice,
                name="Garden notes",
                slug="garden-notes",
                description="Once a month: what grows in the commune garden.",
                domain=domain,
                from_name="Alice's garden",
                from_local="garden",
                signup_open=True,
                archive_public=True,
            )
        if not mlist.subscribers.exists():
            rows = "\n".join(f"{first.lower()}@example.org,{first} {last}" for first, last in NAMES)
            job = services.import_start(
                mlist=mlist,
                member=alice,
                filename="open-day-signups.csv",
                content=f"email,name\n{rows}\n".encode(),
                consent_source="demo: signup sheet at the garden open day",
                mode="confirmed",
            )
            services.import_run(import_id=job.pk)
        if not Campaign.objects.filter(list=mlist, subject=CAMPAIGN_SUBJECT).exists():
            with transaction.atomic():
                campaign = services.campaign_create(
                    mlist=mlist,
                    actor=alice,
                    subject=CAMPAIGN_SUBJECT,
                    text_body=TEXT,
                    html_body=HTML,
                )
                # Sent by the demo's worker as soon as it runs.
                services.campaign_start(campaign=campaign, actor=alice)
        base = settings.PANEL_BASE_URL
        self.stdout.write(f"  signup page: {base}/newsletters/l/{mlist.slug}/")
        self.stdout.write(f"  outbox (staff): {base}/newsletters/staff/outbox/")


NAMES = [
    ("Ada", "Lovelace"),
    ("Bert", "Brecht"),
    ("Clara", "Zetkin"),
    ("Dora", "Maar"),
    ("Emil", "Nolde"),
    ("Frida", "Kahlo"),
    ("Gustav", "Landauer"),
    ("Hannah", "Arendt"),
    ("Ida", "Pfeiffer"),
    ("Jonas", "Salk"),
    ("Kurt", "Tucholsky"),
    ("Lise", "Meitner"),
    ("Milo", "Rau"),
    ("Nina", "Simone"),
    ("Otto", "Neurath"),
    ("Paula", "Modersohn"),
    ("Rosa", "Parks"),
    ("Sophie", "Scholl"),
    ("Tove", "Jansson"),
    ("Ulla", "Hahn"),
]
