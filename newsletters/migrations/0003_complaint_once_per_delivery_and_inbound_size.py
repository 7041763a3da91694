"""A complaint counts once per delivery; an inbound message keeps the size that arrived.

Complaints recorded twice for one delivery before this migration keep their rows (they are
what happened) but are detached from the delivery, and each campaign's complaint count is
made the number of its deliveries complained about, the figure its auto-pause now reads.
Existing messages' sizes are taken from what was stored (all of it, until now).
"""

from typing import Any

from django.db import migrations, models
from django.db.models import Count, Min
from django.db.models.functions import Length


def count_complaints_once(apps: Any, schema_editor: Any) -> None:
    BounceEvent = apps.get_model("newsletters", "BounceEvent")
    Campaign = apps.get_model("newsletters", "Campaign")
    InboundReport = apps.get_model("newsletters", "InboundReport")
    repeated = (
        BounceEvent.objects.filter(kind="complaint", delivery__isnull=False)
        .values("delivery")
        .annotate(n=Count("id"), first=Min("id"))
        .filter(n__gt=1)
    )
    touched = set()
    for row in repeated:
        BounceEvent.objects.filter(kind="complaint", delivery=row["delivery"]).exclude(
            pk=row["first"]
        ).update(delivery=None)
        touched.add(row["delivery"])
    if touched:
        Delivery = apps.get_model("newsletters", "Delivery")
        campaigns = set(
            Delivery.objects.filter(pk__in=touched).values_list("campaign_id", flat=True)
        )
        for campaign in Campaign.objects.filter(pk__in=campaigns):
            people = (
                BounceEvent.objects.filter(kind="complaint", delivery__campaign=campaign)
                .values("delivery")
                .distinct()
                .count()
            )
            campaign.complaints = people
            campaign.complaints_acknowledged = min(campaign.complaints_acknowledged, people)
            campaign.save(update_fields=["complaints", "complaints_acknowledged"])
    InboundReport.objects.update(size=Length("raw"))


class Migration(migrations.Migration):
    dependencies = [
        ("newsletters", "0002_consent_events_append_only"),
    ]

    operations = [
        migrations.AddField(
            model_name="inboundreport",
            name="size",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(count_complaints_once, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="bounceevent",
            constraint=models.UniqueConstraint(
                condition=models.Q(("kind", "complaint")),
                fields=("delivery",),
                name="complaint_once_per_delivery",
            ),
        ),
    ]
