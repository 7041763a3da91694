"""Admin for hosting: nodes (add, capacity, cost, drain, check), sites and jobs to inspect,
and names confirmed without proof (a dispute settled by hand, with its reason)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path

from panel.admin_site import ReadOnlyAdmin
from provisioning import selectors, services
from provisioning.forms import ConfirmNameForm
from provisioning.models import Job, Node, Site, SiteAlias, SshKey


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "status",
        "transport",
        "ssh_host",
        "ssh_port",
        "kind",
        "capacity",
        "monthly_cost",
    )
    list_filter = ("status", "kind")
    readonly_fields = ("facts", "created_at")
    actions = ("enroll", "check_nodes", "drain")

    @admin.action(description="Enroll selected nodes (run their playbook, pin the host key)")
    def enroll(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        started = []
        for node in queryset:
            try:
                services.node_enroll(node=node, actor=request.user)  # type: ignore[arg-type]
                started.append(node)
            except services.HostingError as exc:
                self.message_user(request, f"{node}: {exc}", messages.ERROR)
        if len(started) == 1:
            return redirect("provisioning:staff_node", pk=started[0].pk)
        return None

    @admin.action(description="Check selected nodes (agent facts; a new node becomes available)")
    def check_nodes(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            services.node_check(node=node, actor=request.user)  # type: ignore[arg-type]
        self.message_user(request, "Checks enqueued; see the jobs.", messages.SUCCESS)

    @admin.action(description="Drain selected nodes (no new sites)")
    def drain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            services.node_drain(node=node, actor=request.user)  # type: ignore[arg-type]


class ProofFilter(admin.SimpleListFilter):
    title = "proof of the name"
    parameter_name = "proof"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("waiting", "Waiting for proof (site or alias)"), ("held", "Proved")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Site]) -> QuerySet[Site]:
        waiting = Site.objects.filter(
            Q(verified_at__isnull=True)
            | Q(aliases__pk__isnull=False, aliases__verified_at__isnull=True)
        ).values("pk")
        if self.value() == "waiting":
            return queryset.filter(pk__in=waiting)
        if self.value() == "held":
            return queryset.exclude(pk__in=waiting)
        return queryset


@admin.register(Site)
class SiteAdmin(ReadOnlyAdmin):
    list_display = (
        "domain",
        "member",
        "node",
        "kind",
        "state",
        "verified_how",
        "tls",
        "generation",
        "applied_generation",
    )
    list_filter = ("state", ProofFilter, "node")
    search_fields = ("domain", "member__email")
    # The service audits the confirmation (with its reason); no second row from the admin.
    audit_in_services = True

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:pk>/confirm-name/",
                self.admin_site.admin_view(self.confirm_name),
                name="provisioning_site_confirm_name",
            ),
            *super().get_urls(),
        ]

    def confirm_name(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Hold one of the site's names without DNS proof; a reason is required (audited)."""
        if not request.user.has_perm("provisioning.change_site"):
            raise PermissionDenied
        site = get_object_or_404(Site, pk=pk)
        if request.method == "POST":
            alias_id = request.POST.get("alias", "")
            alias = (
                get_object_or_404(SiteAlias, pk=int(alias_id), site=site)
                if alias_id.isdigit()
                else None
            )
            form = ConfirmNameForm(request.POST)
            try:
                if not form.is_valid():
                    raise services.HostingError("Say why the name is confirmed without proof.")
                services.domain_confirm(
                    site=site,
                    alias=alias,
                    actor=request.user,  # type: ignore[arg-type]
                    reason=form.cleaned_data["reason"],
                )
            except services.HostingError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request, f"{(alias or site).domain} is confirmed.", messages.SUCCESS
                )
            return redirect("admin:provisioning_site_confirm_name", pk=site.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Names of {site.domain} waiting for proof",
            "site": site,
            "names": selectors.unproved_names(site),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "provisioning/admin_confirm_name.html", context)


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "verb", "site", "node", "state", "attempts", "error")
    list_filter = ("state", "verb", "node")


@admin.register(SshKey)
class SshKeyAdmin(ReadOnlyAdmin):
    list_display = ("member", "name", "fingerprint")
