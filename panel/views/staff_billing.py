"""Staff pages about money: payments and bank imports, supplier invoices, closes, trial balance."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from panel.access import permission_required
from panel.forms_billing import BankImportForm, CloseForm, InvoiceForm, PaymentForm
from panel.models import BankImport, BillingPeriod, SupplierInvoice, User
from panel.selectors import ledger as selectors
from panel.services import bank, closing
from panel.services import ledger as ledger_services
from panel.services.ledger import LedgerError
from panel.views.core import _user


def _htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))


@permission_required("panel.view_billingperiod")
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    periods = list(selectors.periods_for_staff())
    closable = next((p for p in reversed(periods) if not closing.why_not_closable(p)), None)
    context = {"periods": periods, "closable": closable, "currency": settings.CURRENCY}
    return render(request, "panel/staff/billing/overview.html", context)


@permission_required("panel.add_payment")
@require_http_methods(["GET", "POST"])
def payments(request: HttpRequest) -> HttpResponse:
    form = PaymentForm(
        request.POST if request.method == "POST" else None, initial={"nonce": _nonce()}
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            ledger_services.payment_record(
                actor=_user(request),
                member=data["member"],
                amount=data["amount"],
                received_on=data["received_on"],
                reference=data["reference"],
                source_key=f"manual:{data['nonce']}",
            )
        except LedgerError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Payment booked."))
            return redirect("staff_payments")
    return _payments_page(request, form=form)


def _payments_page(
    request: HttpRequest,
    *,
    form: PaymentForm | None = None,
    upload: BankImportForm | None = None,
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        "panel/staff/billing/payments.html",
        {
            "form": form or PaymentForm(initial={"nonce": _nonce()}),
            "upload": upload or BankImportForm(),
            "payments": selectors.recent_payments(),
            "imports": selectors.recent_imports(),
            "currency": settings.CURRENCY,
        },
        status=status,
    )


def _nonce() -> str:
    """One key per rendered form, so that a double submit books one payment."""
    import secrets

    return secrets.token_urlsafe(16)


@permission_required("panel.add_payment")
@require_POST
def bank_upload(request: HttpRequest) -> HttpResponse:
    """A statement is read at once (size, encoding) and imported by a worker (its lines).

    A refused file comes back on the payments page with the reason at the file field.
    """
    form = BankImportForm(request.POST, request.FILES)
    if form.is_valid():
        upload = form.cleaned_data["statement"]
        try:
            created = bank.bank_import_create(
                actor=_user(request), filename=upload.name, content=upload.read()
            )
        except bank.BankCsvError as exc:
            form.add_error("statement", str(exc))
        else:
            return redirect("staff_bank_import", pk=created.pk)
    return _payments_page(request, upload=form, status=422)


@permission_required("panel.add_payment")
@require_GET
def bank_import(request: HttpRequest, pk: int) -> HttpResponse:
    upload = get_object_or_404(BankImport, pk=pk)
    template = (
        "panel/staff/billing/_import.html" if _htmx(request) else "panel/staff/billing/import.html"
    )
    return render(request, template, {"upload": upload})


@permission_required("panel.add_supplierinvoice")
@require_http_methods(["GET", "POST"])
def invoices(request: HttpRequest) -> HttpResponse:
    form = InvoiceForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            ledger_services.supplier_invoice_record(actor=_user(request), **form.cleaned_data)
        except LedgerError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Invoice entered."))
            return redirect("staff_invoices")
    return render(
        request,
        "panel/staff/billing/invoices.html",
        {"form": form, "invoices": selectors.invoices(), "currency": settings.CURRENCY},
    )


@permission_required("panel.change_supplierinvoice")
@require_POST
def invoice_paid(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = get_object_or_404(SupplierInvoice, pk=pk)
    from django.utils import timezone

    try:
        ledger_services.supplier_invoice_pay(
            actor=_user(request), invoice=invoice, paid_on=timezone.localdate()
        )
    except LedgerError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, _("Invoice marked as paid."))
    return redirect("staff_invoices")


@permission_required("panel.change_billingperiod")
@require_http_methods(["GET", "POST"])
def close(request: HttpRequest, pk: int) -> HttpResponse:
    period = get_object_or_404(BillingPeriod, pk=pk)
    if period.state != "open":
        return redirect("staff_close_progress", pk=period.pk)
    form = CloseForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            closing.period_close_start(
                period=period,
                actor=_user(request),
                deficit_choice=form.cleaned_data["deficit_choice"],
            )
        except LedgerError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("staff_close_progress", pk=period.pk)
    preview = closing.close_preview(period=period)
    members = User.objects.in_bulk(list(preview.lines))
    rows = [
        (members[member_id], lines, sum(line.amount for line in lines))
        for member_id, lines in sorted(preview.lines.items())
    ]
    context = {
        "period": period,
        "p": preview,
        "rows": rows,
        "form": form,
        "blocked": closing.why_not_closable(period),
        "currency": settings.CURRENCY,
    }
    return render(request, "panel/staff/billing/close.html", context)


@permission_required("panel.view_billingperiod")
@require_GET
def close_progress(request: HttpRequest, pk: int) -> HttpResponse:
    period = get_object_or_404(BillingPeriod, pk=pk)
    template = (
        "panel/staff/billing/_progress.html"
        if _htmx(request)
        else "panel/staff/billing/progress.html"
    )
    return render(request, template, {"period": period, "currency": settings.CURRENCY})


@permission_required("panel.view_account")
@require_GET
def trial_balance(request: HttpRequest) -> HttpResponse:
    rows, debit, credit = selectors.trial_balance()
    return render(
        request,
        "panel/staff/billing/trial_balance.html",
        {"rows": rows, "debit": debit, "credit": credit, "currency": settings.CURRENCY},
    )
