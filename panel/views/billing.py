"""Member pages about money: balance, holds, usage, statements; the commune's results."""

from __future__ import annotations

import csv

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from panel.access import books_required
from panel.selectors import ledger as selectors
from panel.selectors.core import current_statutes, member_count
from panel.views.core import _user


@login_required
@require_GET
def billing(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    return render(
        request,
        "panel/billing/index.html",
        {
            "balance": selectors.balance_of(user),
            "holds": selectors.open_holds(user),
            "series": selectors.usage_by_day(user),
            "usage": selectors.recent_usage(user, limit=30),
            "statements": selectors.statements_of(user),
            "currency": settings.CURRENCY,
        },
    )


@login_required
@require_GET
def statement(request: HttpRequest, label: str) -> HttpResponse:
    user = _user(request)
    period = selectors.period_by_label(label)
    return render(
        request,
        "panel/billing/statement.html",
        {"s": selectors.statement_of(user, period), "currency": settings.CURRENCY},
    )


@login_required
@require_GET
def statement_csv(request: HttpRequest, label: str) -> HttpResponse:
    user = _user(request)
    s = selectors.statement_of(user, selectors.period_by_label(label))
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="statement-{s.period}.csv"'
    writer = csv.writer(response)
    writer.writerow(
        [
            "period",
            "belongs_to",
            "service",
            "kind",
            "quantity",
            "unit",
            "unit_cost",
            "cost_source",
            "events",
            "exact_amount",
            "amount",
            "currency",
        ]
    )
    for line in s.lines:
        writer.writerow(
            [
                s.period,
                line.belongs_to,
                line.service,
                line.kind,
                line.quantity,
                line.unit,
                line.unit_cost,
                line.cost_source,
                line.events,
                line.exact_amount,
                line.amount,
                settings.CURRENCY,
            ]
        )
    return response


@books_required
@require_GET
def commune(request: HttpRequest) -> HttpResponse:
    """The commune's results by period, for its owners (see ``books_required`` for why)."""
    return render(
        request,
        "panel/commune.html",
        {
            "members": member_count(),
            "statutes": current_statutes(),
            "results": selectors.commune_results(),
            "currency": settings.CURRENCY,
        },
    )
