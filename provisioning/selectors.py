"""Hosting reads, always scoped to who asks."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDate
from django.shortcuts import get_object_or_404
from django.utils import timezone

from panel.models import UsageEvent, User
from provisioning.dnsproof import TXT_PREFIX
from provisioning.models import (
    Enrollment,
    Job,
    JobState,
    Node,
    Site,
    SiteAlias,
    SiteState,
    SshKey,
)


def sites_of(member: User) -> QuerySet[Site]:
    return Site.objects.filter(member=member).exclude(state=SiteState.PURGED).select_related("node")


def site_of(member: User, pk: int) -> Site:
    """One of the member's own sites; another member's is a 404."""
    return get_object_or_404(Site.objects.select_related("node", "member"), pk=pk, member=member)


def job_of(member: User, pk: int) -> Job:
    return get_object_or_404(Job.objects.select_related("site"), pk=pk, site__member=member)


def jobs_of(site: Site, *, limit: int = 10) -> list[Job]:
    return list(site.jobs.order_by("-created_at", "-id")[:limit])


def keys_of(member: User) -> QuerySet[SshKey]:
    return SshKey.objects.filter(member=member)


def failed_jobs() -> QuerySet[Job]:
    return (
        Job.objects.filter(state=JobState.HARD_ERROR)
        .select_related("site", "node")
        .order_by("-finished_at")
    )


def site_usage_by_day(site: Site, *, days: int = 30) -> list[dict[str, object]]:
    """Disk and transfer cost per day for one site (its usage carries the site in its key)."""
    first = timezone.localdate() - timedelta(days=days - 1)
    series = []
    for kind in ("disk", "transfer"):
        rows = (
            UsageEvent.objects.filter(
                member_id=site.member_id,
                service="hosting",
                source_key__startswith=f"{kind}:{site.pk}:",
                occurred_at__date__gte=first,
            )
            .annotate(day=TruncDate("occurred_at"))
            .values("day")
            .annotate(amount=Sum("amount"))
        )
        found = {row["day"]: row["amount"] for row in rows}
        points = [
            (first + timedelta(days=i), found.get(first + timedelta(days=i), Decimal(0)))
            for i in range(days)
        ]
        series.append({"kind": kind, "days": points, "peak": max(a for _, a in points)})
    return series


def nodes() -> QuerySet[Node]:
    return Node.objects.order_by("kind", "name")


def node(pk: int) -> Node:
    return get_object_or_404(Node, pk=pk)


def latest_enrollment(node: Node) -> Enrollment | None:
    return node.enrollments.order_by("-created_at", "-id").first()


def unproved_names(site: Site) -> list[dict[str, object]]:
    """The site's names that wait for proof, each with the records that would prove it."""
    claims: list[Site | SiteAlias] = [site, *site.aliases.all()]
    return [
        {
            "claim": claim,
            "alias": claim if isinstance(claim, SiteAlias) else None,
            "domain": claim.domain,
            "txt_name": f"{TXT_PREFIX}.{claim.domain}",
            "token": claim.proof_token,
            "ipv4": site.node.public_ipv4,
            "ipv6": site.node.public_ipv6,
            "cname": settings.HOSTING_CNAME_TARGET,
        }
        for claim in claims
        if not claim.verified
    ]
