"""Views of the commune core: check access, validate, call one service, map its errors."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.i18n import set_language

from panel import selectors, services
from panel.access import permission_required
from panel.audit import audit_record
from panel.forms import ApplicationForm, DecisionForm, LeaveForm
from panel.models import ApplicationState, MembershipStatus, User
from panel.workers import worker_status


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101  (guaranteed by login_required)
    return user


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "panel/home.html")


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    context = {"d": selectors.dashboard_for(_user(request)), "currency": settings.CURRENCY}
    return render(request, "panel/dashboard.html", context)


@login_required
@require_GET
def membership(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    current = selectors.membership_of(user)
    return render(
        request,
        "panel/membership.html",
        {
            "membership": current,
            "events": current.events.select_related("actor") if current else [],
            "applications": selectors.applications_of(user),
            "shares": user.shares.all(),
            "may_apply": current is None
            or current.status in (MembershipStatus.DECLINED, MembershipStatus.LEFT),
            "may_leave": current is not None
            and current.status in (MembershipStatus.MEMBER, MembershipStatus.SUSPENDED),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def membership_apply(request: HttpRequest) -> HttpResponse:
    statutes = selectors.current_statutes()
    if statutes is None:
        messages.error(request, _("The co-op has not published its statutes yet; try again later."))
        return redirect("membership")
    form = ApplicationForm(
        request.POST if request.method == "POST" else None,
        initial={"statutes_version": statutes.version},
    )
    if request.method == "POST" and form.is_valid():
        if form.cleaned_data["statutes_version"] != statutes.version:
            form.add_error(
                None, _("The statutes changed while you read them; please read them again.")
            )
        else:
            try:
                services.membership_apply(
                    user=_user(request),
                    name=form.cleaned_data["name"],
                    statement=form.cleaned_data["statement"],
                    statutes=statutes,
                )
            except services.MembershipError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(
                    request, _("Thank you! Your application is waiting for a decision.")
                )
                return redirect("membership")
    return render(request, "panel/apply.html", {"form": form, "statutes": statutes})


@login_required
@require_GET
def application_detail(request: HttpRequest, pk: int) -> HttpResponse:
    application = selectors.application_of(user=_user(request), pk=pk)
    return render(request, "panel/application_detail.html", {"application": application})


@login_required
@require_http_methods(["GET", "POST"])
def membership_leave(request: HttpRequest) -> HttpResponse:
    form = LeaveForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        user = _user(request)
        try:
            services.membership_leave(user=user, actor=user, reason=form.cleaned_data["reason"])
        except services.MembershipError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("You have left the co-op. Your history stays here."))
            return redirect("membership")
    return render(request, "panel/leave.html", {"form": form})


@login_required
@require_GET
def activity(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.audit_entries_for(_user(request)), 25).get_page(
        request.GET.get("page")
    )
    return render(request, "panel/activity.html", {"page": page})


@require_POST
def switch_language(request: HttpRequest) -> HttpResponse:
    """Django's set_language, plus remembering the choice for emails sent by workers."""
    response = set_language(request)
    language = request.POST.get("language", "")
    if request.user.is_authenticated and language in dict(settings.LANGUAGES):
        user = _user(request)
        if user.language != language:
            before = {"language": user.language}
            User.objects.filter(pk=user.pk).update(language=language)
            audit_record(
                actor=user,
                action="account.language",
                obj=user,
                owner=user,
                before=before,
                after={"language": language},
            )
    return response


# Staff ------------------------------------------------------------------------------------


def _queue(request: HttpRequest, *, failed: tuple[int, DecisionForm] | None = None) -> HttpResponse:
    rows = [
        (a, failed[1] if failed and failed[0] == a.pk else DecisionForm(prefix=f"a{a.pk}"))
        for a in selectors.pending_applications()
    ]
    return render(
        request, "panel/staff/applications.html", {"rows": rows}, status=422 if failed else 200
    )


@permission_required("panel.decide_application")
@require_GET
def staff_applications(request: HttpRequest) -> HttpResponse:
    return _queue(request)


@permission_required("panel.decide_application")
@require_POST
def staff_application_decide(request: HttpRequest, pk: int) -> HttpResponse:
    application = selectors.application_for_decision(pk)
    form = DecisionForm(request.POST, prefix=f"a{pk}")
    htmx = bool(request.htmx)  # type: ignore[attr-defined]
    if not form.is_valid():
        if htmx:
            context = {"application": application, "form": form}
            return render(request, "panel/staff/_application_row.html", context, status=422)
        return _queue(request, failed=(pk, form))
    actor = _user(request)
    try:
        if form.cleaned_data["decision"] == ApplicationState.APPROVED:
            share = services.membership_approve(application=application, actor=actor)
            outcome = _("%(name)s is now a member holding share No. %(number)s.") % {
                "name": application.name,
                "number": share.pk,
            }
        else:
            services.membership_decline(
                application=application, actor=actor, reason=form.cleaned_data["reason"]
            )
            outcome = _("The application of %(name)s was declined.") % {"name": application.name}
    except services.MembershipError as exc:
        outcome, ok = str(exc), False
    else:
        ok = True
    if htmx:
        context = {"application": application, "outcome": outcome, "ok": ok}
        return render(request, "panel/staff/_decided_row.html", context)
    (messages.success if ok else messages.error)(request, outcome)
    return redirect("staff_applications")


@permission_required("panel.view_heartbeat")
@require_GET
def staff_status(request: HttpRequest) -> HttpResponse:
    template = "panel/staff/_status.html" if request.htmx else "panel/staff/status.html"  # type: ignore[attr-defined]
    return render(
        request,
        template,
        {"workers": worker_status(timeout=1.0), "beat": selectors.heartbeat_at("beat")},
    )
