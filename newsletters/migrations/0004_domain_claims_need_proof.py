"""A claim of a sending domain holds nothing until it is proven.

Names were unique across members, so the first to type a name held it; now each member
claims a name once, and only one verified claim per name may exist. Existing rows satisfy
both (names were unique).
"""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("newsletters", "0003_complaint_once_per_delivery_and_inbound_size"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="sendingdomain",
            name="sending_domain_unique",
        ),
        migrations.AddField(
            model_name="sendingdomain",
            name="lost_notice_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="sendingdomain",
            name="override_reason",
            field=models.CharField(blank=True, max_length=300),
        ),
        migrations.AddConstraint(
            model_name="sendingdomain",
            constraint=models.UniqueConstraint(
                fields=("member", "name"), name="sending_domain_claim_unique"
            ),
        ),
        migrations.AddConstraint(
            model_name="sendingdomain",
            constraint=models.UniqueConstraint(
                condition=models.Q(("verified_at__isnull", False)),
                fields=("name",),
                name="sending_domain_verified_unique",
            ),
        ),
    ]
