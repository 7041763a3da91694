"""Call pages: phones, PIN, plan, prices, history; staff: rate decks and live calls."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from panel.access import member_required, permission_required
from panel.selectors.ledger import balance_of
from panel.views.core import _user
from telephony import decks, rating, selectors, services
from telephony.forms import DeckForm, MappingForm, PhoneForm, PinForm, PlanForm, QuoteForm
from telephony.models import (
    ADMIN_ONLY_CLASSES,
    AccessNumber,
    CallRecord,
    DeckState,
    Phone,
    RateDeck,
)


def _context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    user = _user(request)
    plan = services.plan_for(user)
    return {
        "plan": plan,
        "balance": balance_of(user),
        "phones": Phone.objects.filter(member=user),
        "access_numbers": AccessNumber.objects.all(),
        "calls": CallRecord.objects.filter(member=user, is_check=False).select_related(
            "deck", "rate"
        )[:50],
        "pin_locks": services.pin_locks_of(user),
        "now": timezone.now(),
        "phone_form": PhoneForm(),
        "pin_form": PinForm(),
        "plan_form": PlanForm(
            initial={
                "per_call_cap": plan.per_call_cap,
                "allowed_classes": [c for c in plan.allowed_classes if c not in ADMIN_ONLY_CLASSES],
            }
        ),
        "quote_form": QuoteForm(request.GET or None),
        "currency": settings.CURRENCY,
        **extra,
    }


@member_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    extra: dict[str, Any] = {}
    form = QuoteForm(request.GET or None)
    if request.GET and form.is_valid():
        region = getattr(AccessNumber.objects.first(), "country", "DE")
        try:
            extra["quote"] = services.quote(digits=form.cleaned_data["number"], region=region)
        except rating.NotANumber as exc:
            form.add_error("number", str(exc))
    return render(request, "telephony/index.html", _context(request, quote_form=form, **extra))


@member_required
@require_POST
def phone_add(request: HttpRequest) -> HttpResponse:
    form = PhoneForm(request.POST)
    if form.is_valid():
        try:
            phone = services.phone_add(member=_user(request), number=form.cleaned_data["number"])
        except services.TelephonyError as exc:
            form.add_error("number", str(exc))
        else:
            messages.success(
                request,
                _("Call an access number from %(number)s and key in %(code)s to verify it.")
                % {"number": phone.number, "code": phone.verification_code},
            )
            return redirect("telephony:index")
    return render(request, "telephony/index.html", _context(request, phone_form=form), status=422)


@member_required
@require_POST
def phone_remove(request: HttpRequest, pk: int) -> HttpResponse:
    user = _user(request)
    phone = get_object_or_404(Phone, pk=pk, member=user)
    services.phone_remove(phone=phone, actor=user)
    return redirect("telephony:index")


@member_required
@require_POST
def pin(request: HttpRequest) -> HttpResponse:
    form = PinForm(request.POST)
    if form.is_valid():
        services.pin_set(member=_user(request), pin=form.cleaned_data["pin"])
        messages.success(request, _("Your PIN is set."))
        return redirect("telephony:index")
    return render(request, "telephony/index.html", _context(request, pin_form=form), status=422)


@member_required
@require_POST
def plan(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = PlanForm(request.POST)
    if form.is_valid():
        current = services.plan_for(user)
        keep_admin = [c for c in current.allowed_classes if c in ADMIN_ONLY_CLASSES]
        try:
            services.plan_update(
                member=user,
                actor=user,
                per_call_cap=form.cleaned_data["per_call_cap"],
                allowed_classes=form.cleaned_data["allowed_classes"] + keep_admin,
            )
        except services.TelephonyError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Your call plan is saved."))
            return redirect("telephony:index")
    return render(request, "telephony/index.html", _context(request, plan_form=form), status=422)


@member_required
@require_POST
def pin_unlock(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    if services.pin_unlock(member=user, actor=user):
        messages.success(request, _("Calls with your PIN are unlocked."))
    return redirect("telephony:index")


@permission_required("telephony.add_ratedeck")
@require_http_methods(["GET", "POST"])
def staff_decks(request: HttpRequest) -> HttpResponse:
    form = DeckForm(request.POST if request.method == "POST" else None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            deck = services.deck_draft(
                carrier=form.cleaned_data["carrier"],
                actor=_user(request),
                filename=upload.name,
                content=upload.read(),
                effective_from=form.cleaned_data["effective_from"],
                start=form.cleaned_data["read_as"],
            )
        except (services.TelephonyError, decks.DeckError) as exc:
            form.add_error("file", str(exc))
        else:
            return redirect("telephony:staff_deck_mapping", pk=deck.pk)
    decks_shown = (
        RateDeck.objects.select_related("carrier")
        .defer("content")
        .annotate(file_kept=Q(content__isnull=False))[:50]
    )
    busy = any(d.state == DeckState.IMPORTING for d in decks_shown)
    template = (
        "telephony/_decks.html" if getattr(request, "htmx", False) else "telephony/staff_decks.html"
    )
    return render(
        request,
        template,
        {"form": form, "decks": decks_shown, "busy": busy},
        status=422 if form.errors else 200,
    )


def _layout(data: Any, stored: decks.Mapping) -> decks.Mapping:
    """The file's layout as the form has it (each value from its allowlist), no columns yet."""
    return decks.Mapping(
        delimiter=data.get("delimiter")
        if data.get("delimiter") in decks.DELIMITERS
        else stored.delimiter,
        encoding=data.get("encoding")
        if data.get("encoding") in decks.ENCODINGS
        else stored.encoding,
        header=bool(data.get("header")),
    )


@permission_required("telephony.add_ratedeck")
@require_http_methods(["GET", "POST"])
def staff_deck_mapping(request: HttpRequest, pk: int) -> HttpResponse:
    """An uploaded deck's preview: its layout and columns, changed until they read right."""
    deck = get_object_or_404(RateDeck.objects.defer("content").select_related("carrier"), pk=pk)
    if deck.state != DeckState.DRAFT:
        return redirect("telephony:staff_decks")
    if request.method == "POST" and request.POST.get("action") == "discard":
        services.deck_discard(deck_id=deck.pk, actor=_user(request))
        messages.success(request, _("The upload is discarded."))
        return redirect("telephony:staff_decks")
    head = services.deck_head(deck)
    stored = decks.Mapping.from_json(deck.mapping)
    data = request.POST if request.method == "POST" else (request.GET or None)
    if data is None:
        shown = decks.preview(head, stored)
        form = MappingForm(
            initial=MappingForm.initial_from(stored, shown.index), columns=shown.columns
        )
    else:
        layout = decks.preview(head, _layout(data, stored))
        form = MappingForm(data, columns=layout.columns)
        shown = decks.preview(head, form.mapping()) if form.is_valid() else layout
    if request.method == "POST" and form.is_valid():
        try:
            services.deck_confirm(
                deck_id=deck.pk,
                actor=_user(request),
                mapping=form.mapping(),
                save_as=form.cleaned_data["save_as"],
            )
        except (services.TelephonyError, decks.DeckError) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("The deck is being imported."))
            return redirect("telephony:staff_decks")
    context = {
        "deck": deck,
        "form": form,
        "preview": shown,
        "fields": [(k, label, form[f"column_{k}"]) for k, label in decks.FIELDS.items()],
        "encoding": decks.ENCODINGS.get(shown.mapping.encoding, shown.mapping.encoding),
        "delimiter": decks.DELIMITERS.get(shown.mapping.delimiter, ""),
        "detected": shown.sniffed,
    }
    template = (
        "telephony/_deck_preview.html"
        if getattr(request, "htmx", False)
        else "telephony/staff_deck_mapping.html"
    )
    return render(request, template, context, status=422 if form.errors else 200)


@permission_required("telephony.add_ratedeck")
@require_POST
def staff_deck_retry(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        services.deck_retry(deck_id=pk, actor=_user(request))
    except RateDeck.DoesNotExist:
        raise Http404 from None
    except services.TelephonyError as exc:
        messages.error(request, str(exc))
    return redirect("telephony:staff_decks")


@permission_required("telephony.view_callrecord")
@require_GET
def staff_live(request: HttpRequest) -> HttpResponse:
    template = (
        "telephony/_live.html" if getattr(request, "htmx", False) else "telephony/staff_live.html"
    )
    return render(
        request,
        template,
        {**selectors.live_calls(now=timezone.now()), "currency": settings.CURRENCY},
    )
