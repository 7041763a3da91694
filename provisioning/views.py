"""Hosting pages: check access, validate, call one service, map its errors."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from panel.access import member_required, permission_required
from panel.views.core import _user
from provisioning import selectors, services, ssh
from provisioning.forms import AliasForm, DatabaseForm, KeyForm, SiteForm
from provisioning.models import JobState, SiteAlias, SshKey


@member_required
@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = SiteForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            site = services.site_create(
                member=user, domain=form.cleaned_data["domain"], kind=form.cleaned_data["kind"]
            )
        except services.HostingError as exc:
            form.add_error("domain", str(exc))
        else:
            messages.success(request, _("%(domain)s is being set up.") % {"domain": site.domain})
            return redirect("provisioning:site", pk=site.pk)
    return render(
        request, "provisioning/index.html", {"sites": selectors.sites_of(user), "form": form}
    )


def _site_context(request: HttpRequest, site: Any, **extra: Any) -> dict[str, Any]:
    jobs = selectors.jobs_of(site)
    return {
        "site": site,
        "jobs": jobs,
        "busy": any(
            job.state in (JobState.PENDING, JobState.RUNNING, JobState.SOFT_ERROR) for job in jobs
        ),
        "aliases": site.aliases.all(),
        "alias_form": AliasForm(),
        "database_form": DatabaseForm(),
        "databases": site.databases.all(),
        "usage": selectors.site_usage_by_day(site),
        "unproved": selectors.unproved_names(site),
        "currency": settings.CURRENCY,
        **extra,
    }


@member_required
@require_GET
def site(request: HttpRequest, pk: int) -> HttpResponse:
    found = selectors.site_of(_user(request), pk)
    return render(request, "provisioning/site.html", _site_context(request, found))


@member_required
@require_GET
def site_jobs(request: HttpRequest, pk: int) -> HttpResponse:
    found = selectors.site_of(_user(request), pk)
    return render(request, "provisioning/_jobs.html", _site_context(request, found))


ACTIONS: dict[str, Any] = {
    "suspend": services.site_suspend,
    "resume": services.site_resume,
    "delete": services.site_delete,
    "undelete": services.site_undelete,
    "tls": services.cert_request,
    # "Check now": look up the site's unproved names at once.
    "check": services.domain_check,
}


@member_required
@require_POST
def site_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    user = _user(request)
    found = selectors.site_of(user, pk)
    if action not in ACTIONS:
        return redirect("provisioning:site", pk=found.pk)
    try:
        outcome = ACTIONS[action](site=found, actor=user)
    except services.HostingError as exc:
        messages.error(request, str(exc))
    else:
        if action == "check":
            _tell_checks(request, outcome)
    return redirect("provisioning:site", pk=found.pk)


def _tell_checks(request: HttpRequest, results: list[tuple[str, bool, str]]) -> None:
    for name, proved, _note in results:
        if proved:
            text = _("%(name)s is proved; it is being set up.")
            messages.success(request, text % {"name": name})
        else:
            text = _("%(name)s is not proved yet; see what DNS answered.")
            messages.warning(request, text % {"name": name})


@member_required
@require_POST
def alias_add(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.site_of(user, pk)
    form = AliasForm(request.POST)
    if form.is_valid():
        try:
            services.site_alias_add(site=found, domain=form.cleaned_data["domain"], actor=user)
        except services.HostingError as exc:
            form.add_error("domain", str(exc))
        else:
            return redirect("provisioning:site", pk=found.pk)
    return render(
        request,
        "provisioning/site.html",
        _site_context(request, found, alias_form=form),
        status=422,
    )


@member_required
@require_POST
def alias_remove(request: HttpRequest, pk: int, alias_pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.site_of(user, pk)
    alias = get_object_or_404(SiteAlias, pk=alias_pk, site=found)
    services.site_alias_remove(alias=alias, actor=user)
    return redirect("provisioning:site", pk=found.pk)


@member_required
@require_POST
def database_add(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.site_of(user, pk)
    form = DatabaseForm(request.POST)
    if not form.is_valid():
        # Said next to the field, as for every other form (nothing was created).
        return render(
            request,
            "provisioning/site.html",
            _site_context(request, found, database_form=form),
            status=422,
        )
    try:
        database, password = services.database_create(
            site=found, engine=form.cleaned_data["engine"], actor=user
        )
    except services.HostingError as exc:
        messages.error(request, str(exc))
        return redirect("provisioning:site", pk=found.pk)
    # Shown on this response only; the panel keeps no copy.
    return render(
        request,
        "provisioning/site.html",
        _site_context(request, found, new_database=database, new_password=password),
    )


@member_required
@require_POST
def job_retry(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    job = selectors.job_of(user, pk)
    try:
        services.job_retry(job=job, actor=user)
    except services.HostingError as exc:
        messages.error(request, str(exc))
    return redirect("provisioning:site", pk=job.site_id)


@member_required
@require_http_methods(["GET", "POST"])
def keys(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = KeyForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            services.ssh_key_add(
                member=user,
                name=form.cleaned_data["name"],
                public_key=form.cleaned_data["public_key"],
            )
        except services.HostingError as exc:
            form.add_error("public_key", str(exc))
        else:
            messages.success(request, _("Key added; your sites are being updated."))
            return redirect("provisioning:keys")
    return render(
        request, "provisioning/keys.html", {"keys": selectors.keys_of(user), "form": form}
    )


@member_required
@require_POST
def key_remove(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    key = get_object_or_404(SshKey, pk=pk, member=user)
    services.ssh_key_remove(key=key, actor=user)
    return redirect("provisioning:keys")


@permission_required("provisioning.view_job")
@require_GET
def staff_failed_jobs(request: HttpRequest) -> HttpResponse:
    return render(request, "provisioning/staff_jobs.html", {"jobs": selectors.failed_jobs()[:200]})


@permission_required("provisioning.change_node")
@require_GET
def staff_nodes(request: HttpRequest) -> HttpResponse:
    return render(request, "provisioning/staff_nodes.html", {"nodes": selectors.nodes()})


def _node_context(found: Any) -> dict[str, Any]:
    enrollment = selectors.latest_enrollment(found)
    return {
        "node": found,
        "enrollment": enrollment,
        "busy": enrollment is not None and enrollment.state in ("pending", "running"),
        "panel_key": ssh.panel_public_key(),
        "fingerprint": ssh.fingerprint(found.host_key) if found.host_key else "",
    }


@permission_required("provisioning.change_node")
@require_GET
def staff_node(request: HttpRequest, pk: int) -> HttpResponse:
    found = selectors.node(pk)
    context = _node_context(found)
    if not request.headers.get("HX-Request"):
        return render(request, "provisioning/staff_node.html", context)
    response = render(request, "provisioning/_enrollment.html", context)
    if not context["busy"]:
        # The run just ended: the node's status, pinned key and the button change with it,
        # so the whole page is loaded once more (and stops polling).
        response["HX-Refresh"] = "true"
    return response


@permission_required("provisioning.change_node")
@require_POST
def staff_node_enroll(request: HttpRequest, pk: int) -> HttpResponse:
    found = selectors.node(pk)
    try:
        services.node_enroll(node=found, actor=_user(request))
    except services.HostingError as exc:
        messages.error(request, str(exc))
    return redirect("provisioning:staff_node", pk=found.pk)
