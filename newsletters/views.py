"""Newsletter pages: check access, validate, call one service, map its errors.

Members' pages look everything up through selectors scoped to the member (another member's
list is a 404). The public pages (signup, confirm, unsubscribe, archive) need no login.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from newsletters import selectors, services, tokens
from newsletters.compose import Composer, Recipient
from newsletters.forms import (
    CampaignForm,
    DomainForm,
    ImportForm,
    ListForm,
    OverrideForm,
    ScheduleForm,
    SignupForm,
    TestSendForm,
)
from newsletters.models import ImportState, SubscriberStatus
from panel.access import member_required, permission_required
from panel.views.core import _user


def client_ip(request: HttpRequest) -> str | None:
    """The visitor's address for the consent record; behind the TLS proxy, the one it saw."""
    candidates = [request.META.get("REMOTE_ADDR", "")]
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            # Only the last hop was added by our own proxy; earlier ones are the client's say.
            candidates.insert(0, forwarded.split(",")[-1].strip())
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _agent(request: HttpRequest) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:300]


def _throttled(key: str, limit: int, seconds: int) -> bool:
    """Count a hit; true once ``limit`` hits fell in the window (allauth's rate-limit idea)."""
    if cache.add(key, 1, seconds):
        return False
    try:
        return cache.incr(key) > limit
    except ValueError:  # expired between add and incr
        cache.set(key, 1, seconds)
        return False


# Member pages ----------------------------------------------------------------------------


@member_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    return render(
        request,
        "newsletters/index.html",
        {
            "domains": selectors.domains_of(user),
            "lists": selectors.lists_of(user),
            "domain_form": DomainForm(),
        },
    )


@member_required
@require_POST
def domain_add(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = DomainForm(request.POST)
    if form.is_valid():
        try:
            domain = services.domain_add(member=user, name=form.cleaned_data["name"])
        except services.NewsletterError as exc:
            form.add_error("name", str(exc))
        else:
            return redirect("newsletters:domain", pk=domain.pk)
    return render(
        request,
        "newsletters/index.html",
        {
            "domains": selectors.domains_of(user),
            "lists": selectors.lists_of(user),
            "domain_form": form,
        },
        status=422,
    )


@member_required
@require_GET
def domain(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.domain_of(user, pk)
    return render(
        request,
        "newsletters/domain.html",
        {
            "domain": found,
            "records": selectors.dns_records(found),
            "result": found.check_result,
            "held": not found.verified and services.holder_of(found.name, besides=user),
        },
    )


@member_required
@require_POST
def domain_check(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.domain_of(user, pk)
    try:
        checked = services.domain_check(domain=found, actor=user)
    except services.NewsletterError as exc:
        messages.error(request, str(exc))
    else:
        if checked.verified:
            messages.success(request, _("%(name)s is verified.") % {"name": checked.name})
        elif checked.check_result.get("held_by_another_member"):
            messages.warning(
                request,
                _(
                    "Your record for %(name)s is found, but another member verified the domain "
                    "first. If it is yours, write to the co-op's admins."
                )
                % {"name": checked.name},
            )
        else:
            messages.warning(
                request,
                _("%(name)s is not verified yet: the DKIM record was not found or differs.")
                % {"name": checked.name},
            )
    return redirect("newsletters:domain", pk=found.pk)


@member_required
@require_POST
def domain_remove(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.domain_of(user, pk)
    try:
        services.domain_remove(domain=found, actor=user)
    except services.NewsletterError as exc:
        messages.error(request, str(exc))
        return redirect("newsletters:domain", pk=found.pk)
    return redirect("newsletters:index")


@member_required
@require_http_methods(["GET", "POST"])
def list_new(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    domains = selectors.verified_domains_of(user)
    form = ListForm(request.POST or None, domains=domains)
    if request.method == "POST" and form.is_valid():
        try:
            mlist = services.list_create(member=user, **form.cleaned_data)
        except services.NewsletterError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("newsletters:list", pk=mlist.pk)
    return render(
        request,
        "newsletters/list_form.html",
        {"form": form, "domains": domains},
        status=422 if form.errors else 200,
    )


@member_required
@require_http_methods(["GET", "POST"])
def list_edit(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    mlist = selectors.list_of(user, pk)
    domains = selectors.verified_domains_of(user)
    initial = {f: getattr(mlist, f) for f in services.LIST_FIELDS}
    form = ListForm(request.POST or None, domains=domains, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.list_update(mlist=mlist, actor=user, **form.cleaned_data)
        except services.NewsletterError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("newsletters:list", pk=mlist.pk)
    return render(
        request,
        "newsletters/list_form.html",
        {"form": form, "domains": domains, "list": mlist},
        status=422 if form.errors else 200,
    )


@member_required
@require_GET
def list_detail(request: HttpRequest, pk: int) -> HttpResponse:
    mlist = selectors.list_of(_user(request), pk)
    query = request.GET.get("q", "")[:100]
    status = request.GET.get("status", "")
    page = Paginator(selectors.subscribers(mlist, query=query, status=status), 50).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "newsletters/list.html",
        {
            "list": mlist,
            "stats": selectors.list_stats(mlist),
            "campaigns": selectors.campaigns_of(mlist)[:50],
            "page": page,
            "query": query,
            "status": status,
            "statuses": SubscriberStatus.choices,
            "import_form": ImportForm(),
            "imports": mlist.imports.all()[:5],
            "signup_url": f"{settings.PANEL_BASE_URL}/newsletters/l/{mlist.slug}/",
        },
    )


@member_required
@require_GET
def subscriber(request: HttpRequest, pk: int, sub_pk: int) -> HttpResponse:
    found = selectors.subscriber_of(_user(request), pk, sub_pk)
    return render(
        request,
        "newsletters/subscriber.html",
        {
            "subscriber": found,
            "consent": selectors.consent_history(found),
            "bounces": selectors.bounce_history(found),
        },
    )


@member_required
@require_POST
def subscriber_remove(request: HttpRequest, pk: int, sub_pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.subscriber_of(user, pk, sub_pk)
    services.unsubscribe(
        subscriber=found,
        source=f"removed by the list owner ({user.email})",
        ip=client_ip(request),
        user_agent=_agent(request),
        actor=user,
    )
    return redirect("newsletters:subscriber", pk=pk, sub_pk=sub_pk)


@member_required
@require_POST
def list_import(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    mlist = selectors.list_of(user, pk)
    form = ImportForm(request.POST, request.FILES)
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            job = services.import_start(
                mlist=mlist,
                member=user,
                filename=upload.name or "upload.csv",
                content=upload.read(services.IMPORT_MAX_BYTES + 1),
                consent_source=form.cleaned_data["consent_source"],
                mode=form.cleaned_data["mode"],
            )
        except services.NewsletterError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("newsletters:import", pk=job.pk)
    return render(
        request, "newsletters/import_form.html", {"list": mlist, "form": form}, status=422
    )


@member_required
@require_GET
def import_status(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.import_of(_user(request), pk)
    busy = job.state in (ImportState.QUEUED, ImportState.RUNNING)
    htmx = bool(request.htmx)  # type: ignore[attr-defined]
    template = "newsletters/_import.html" if htmx else "newsletters/import.html"
    return render(request, template, {"job": job, "busy": busy})


@member_required
@require_GET
def list_export(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    mlist = selectors.list_of(_user(request), pk)
    response = StreamingHttpResponse(selectors.export_rows(mlist), content_type="text/csv")
    stamp = timezone.localdate().isoformat()
    response["Content-Disposition"] = f'attachment; filename="{mlist.slug}-{stamp}.csv"'
    return response


@member_required
@require_http_methods(["GET", "POST"])
def campaign_new(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    mlist = selectors.list_of(user, pk)
    form = CampaignForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            campaign = services.campaign_create(mlist=mlist, actor=user, **form.cleaned_data)
        except services.NewsletterError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("newsletters:campaign", pk=campaign.pk)
    return render(
        request,
        "newsletters/campaign_new.html",
        {"list": mlist, "form": form},
        status=422 if form.errors else 200,
    )


# A newsletter's HTML is the member's own markup: the panel's pages show it in a sandboxed
# frame loaded from these URLs, each with a policy of its own. The panel's policy (no inline
# styles, images from the panel only) would strip a newsletter of its looks; this one lets it
# style itself and show its images but run nothing, submit nothing and load nothing else, and
# lets only the panel's own pages frame it.
NEWSLETTER_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; font-src https: data:;"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
)


def _newsletter_page(html: str) -> HttpResponse:
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = NEWSLETTER_PAGE_CSP
    # The frame's image requests should not tell strangers' servers which panel page asked.
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "private, no-store"
    return response


def _campaign_context(campaign: Any, **extra: Any) -> dict[str, Any]:
    composer = Composer(campaign, campaign.list)
    text, page = composer.preview(Recipient(0, 0, "reader@example.org", _("Reader")))
    return {
        "campaign": campaign,
        "list": campaign.list,
        "progress": selectors.campaign_progress(campaign),
        "form": CampaignForm(
            initial={
                "subject": campaign.subject,
                "text_body": campaign.text_body,
                "html_body": campaign.html_body,
            }
        ),
        "schedule_form": ScheduleForm(),
        "test_form": TestSendForm(),
        "preview_text": text,
        "has_preview_html": bool(page),
        **extra,
    }


@member_required
@require_http_methods(["GET", "POST"])
def campaign(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.campaign_of(user, pk)
    if request.method == "POST":
        form = CampaignForm(request.POST)
        if form.is_valid():
            try:
                services.campaign_update(campaign=found, actor=user, **form.cleaned_data)
            except services.NewsletterError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, _("Saved."))
                return redirect("newsletters:campaign", pk=found.pk)
        return render(
            request, "newsletters/campaign.html", _campaign_context(found, form=form), status=422
        )
    return render(request, "newsletters/campaign.html", _campaign_context(found))


@member_required
@require_GET
@xframe_options_sameorigin
def campaign_preview(request: HttpRequest, pk: int) -> HttpResponse:
    """The campaign's HTML as a reader would get it, for the frame on the campaign page."""
    found = selectors.campaign_of(_user(request), pk)
    _text, page = Composer(found, found.list).preview(
        Recipient(0, 0, "reader@example.org", _("Reader"))
    )
    if not page:
        raise Http404
    return _newsletter_page(page)


@member_required
@require_GET
def campaign_progress(request: HttpRequest, pk: int) -> HttpResponse:
    found = selectors.campaign_of(_user(request), pk)
    return render(
        request, "newsletters/_progress.html", {"progress": selectors.campaign_progress(found)}
    )


ACTIONS = {
    "start": services.campaign_start,
    "pause": services.campaign_pause,
    "resume": services.campaign_resume,
    "cancel": services.campaign_cancel,
    "unschedule": services.campaign_unschedule,
}


@member_required
@require_POST
def campaign_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    user = _user(request)
    found = selectors.campaign_of(user, pk)
    if action not in ACTIONS:
        raise Http404
    try:
        ACTIONS[action](campaign=found, actor=user)
    except services.NewsletterError as exc:
        messages.error(request, str(exc))
    return redirect("newsletters:campaign", pk=found.pk)


@member_required
@require_POST
def campaign_schedule(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.campaign_of(user, pk)
    form = ScheduleForm(request.POST)
    if form.is_valid():
        try:
            services.campaign_schedule(campaign=found, actor=user, at=form.cleaned_data["at"])
        except services.NewsletterError as exc:
            messages.error(request, str(exc))
    else:
        messages.error(request, _("Give a date and time."))
    return redirect("newsletters:campaign", pk=found.pk)


@member_required
@require_POST
def campaign_test(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    found = selectors.campaign_of(user, pk)
    form = TestSendForm(request.POST)
    if form.is_valid():
        try:
            services.campaign_test_send(campaign=found, actor=user, to=form.cleaned_data["to"])
        except services.NewsletterError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, _("A test copy is on its way to %(to)s.") % {"to": form.cleaned_data["to"]}
            )
    else:
        messages.error(request, _("Give an email address."))
    return redirect("newsletters:campaign", pk=found.pk)


# Public pages ----------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest, slug: str) -> HttpResponse:
    mlist = selectors.public_list(slug)
    if not mlist.signup_open:
        raise Http404
    form = SignupForm(request.POST or None)
    if request.method == "POST" and request.POST.get("website", ""):
        # A bot (people never see the field), whatever else it sent: answer as if it worked,
        # store nothing.
        return render(request, "newsletters/public/check_inbox.html", {"list": mlist})
    if request.method == "POST" and form.is_valid():
        ip = client_ip(request) or "unknown"
        email = form.cleaned_data["email"].strip().lower()
        # The address is not checked yet: hashed, any text makes a valid cache key.
        email_key = hashlib.sha256(email.encode("utf-8", "surrogatepass")).hexdigest()
        if _throttled(f"nl-signup-ip:{mlist.pk}:{ip}", 10, 3600) or _throttled(
            f"nl-signup-email:{mlist.pk}:{email_key}", 3, 86400
        ):
            return render(
                request,
                "newsletters/public/signup.html",
                {
                    "list": mlist,
                    "form": form,
                    "error": _("Too many signups from here; try again later."),
                },
                status=429,
            )
        try:
            services.subscribe_request(
                mlist=mlist,
                email=form.cleaned_data["email"],
                name=form.cleaned_data["name"],
                ip=client_ip(request),
                user_agent=_agent(request),
                source=f"signup form /newsletters/l/{mlist.slug}/",
            )
        except services.NewsletterError as exc:
            form.add_error("email", str(exc))
        else:
            return render(request, "newsletters/public/check_inbox.html", {"list": mlist})
    return render(
        request,
        "newsletters/public/signup.html",
        {"list": mlist, "form": form},
        status=422 if form.errors else 200,
    )


@require_http_methods(["GET", "POST"])
def confirm(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a button and POST confirms: mail scanners that follow links confirm nothing."""
    try:
        found = services.subscriber_from_confirm_token(token)
    except services.NewsletterError as exc:
        return render(request, "newsletters/public/message.html", {"message": exc}, status=400)
    if request.method == "POST":
        found = services.subscription_confirm(
            subscriber=found,
            ip=client_ip(request),
            user_agent=_agent(request),
            source=f"confirmation link /newsletters/confirm/ ({found.list.slug})",
        )
    return render(request, "newsletters/public/confirm.html", {"subscriber": found})


@csrf_exempt  # RFC 8058: the one-click POST carries no cookie, token or session
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    parsed = tokens.parse_unsubscribe_token(token)
    if parsed is None:
        return render(
            request,
            "newsletters/public/message.html",
            {"message": _("This unsubscribe link is not valid.")},
            status=400,
        )
    if request.method == "POST":
        one_click = request.POST.get("List-Unsubscribe") == "One-Click"
        try:
            found = services.unsubscribe_by_token(
                token=token,
                source="one-click unsubscribe (RFC 8058)" if one_click else "unsubscribe page",
                ip=client_ip(request),
                user_agent=_agent(request),
            )
        except services.NewsletterError as exc:
            return HttpResponseBadRequest(str(exc))
        if one_click:
            return HttpResponse(_("Unsubscribed."), content_type="text/plain; charset=utf-8")
        return render(request, "newsletters/public/unsubscribed.html", {"subscriber": found})
    found = selectors.subscriber_for_unsubscribe(parsed[0])
    return render(request, "newsletters/public/unsubscribe.html", {"subscriber": found})


@require_GET
def archive(request: HttpRequest, slug: str) -> HttpResponse:
    mlist = selectors.public_list(slug)
    if not selectors.can_read_archive(mlist, request.user):
        raise Http404
    return render(
        request,
        "newsletters/public/archive.html",
        {"list": mlist, "campaigns": selectors.archive(mlist)},
    )


@require_GET
def archive_item(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    mlist = selectors.public_list(slug)
    if not selectors.can_read_archive(mlist, request.user):
        raise Http404
    found = selectors.archived_campaign(mlist, pk)
    text, page = Composer(found, mlist).preview(
        Recipient(0, 0, "", _("reader")), unsubscribe_url=""
    )
    return render(
        request,
        "newsletters/public/archive_item.html",
        {"list": mlist, "campaign": found, "text": text, "has_page": bool(page)},
    )


@require_GET
@xframe_options_sameorigin
def archive_item_page(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """An archived campaign's HTML, for the frame on its archive page."""
    mlist = selectors.public_list(slug)
    if not selectors.can_read_archive(mlist, request.user):
        raise Http404
    found = selectors.archived_campaign(mlist, pk)
    _text, page = Composer(found, mlist).preview(
        Recipient(0, 0, "", _("reader")), unsubscribe_url=""
    )
    if not page:
        raise Http404
    return _newsletter_page(page)


# Staff -----------------------------------------------------------------------------------


@permission_required("newsletters.view_campaign")
@require_GET
def outbox(request: HttpRequest) -> HttpResponse:
    return render(request, "newsletters/staff_outbox.html", {"outbox": selectors.outbox()})


@permission_required("newsletters.change_sendingdomain")
@require_GET
def staff_domains(request: HttpRequest) -> HttpResponse:
    return _staff_domains_page(request, OverrideForm(), status=200)


def _staff_domains_page(
    request: HttpRequest, form: OverrideForm, *, status: int, failed: int | None = None
) -> HttpResponse:
    query = request.GET.get("q", "").strip().lower()[:253]
    return render(
        request,
        "newsletters/staff_domains.html",
        {"claims": selectors.domain_claims(query), "q": query, "form": form, "failed": failed},
        status=status,
    )


@permission_required("newsletters.change_sendingdomain")
@require_POST
def staff_domain_override(request: HttpRequest, pk: int) -> HttpResponse:
    """An admin gives a contested name to one member's claim, saying why (audited)."""
    found = selectors.domain_claim(pk)
    form = OverrideForm(request.POST)
    if form.is_valid():
        try:
            services.domain_override(
                domain=found, actor=_user(request), reason=form.cleaned_data["reason"]
            )
        except services.NewsletterError as exc:
            form.add_error("reason", str(exc))
        else:
            messages.success(
                request,
                _("%(name)s is now held by %(member)s.")
                % {"name": found.name, "member": found.member.email},
            )
            return redirect(f"{reverse('newsletters:staff_domains')}?q={found.name}")
    return _staff_domains_page(request, form, status=422, failed=found.pk)
