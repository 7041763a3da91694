"""Admin for hosting: nodes (add, capacity, cost, drain, check), sites and jobs to inspect."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from panel.admin_site import ReadOnlyAdmin
from provisioning import services
from provisioning.models import Job, Node, Site, SshKey


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


@admin.register(Site)
class SiteAdmin(ReadOnlyAdmin):
    list_display = (
        "domain",
        "member",
        "node",
        "kind",
        "state",
        "tls",
        "generation",
        "applied_generation",
    )
    list_filter = ("state", "node")
    search_fields = ("domain", "member__email")


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "verb", "site", "node", "state", "attempts", "error")
    list_filter = ("state", "verb", "node")


@admin.register(SshKey)
class SshKeyAdmin(ReadOnlyAdmin):
    list_display = ("member", "name", "fingerprint")
