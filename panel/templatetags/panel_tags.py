from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from django import template
from django.forms import BoundField, CheckboxInput
from django.utils.formats import number_format

from panel.audit import action_label

register = template.Library()


@register.inclusion_tag("panel/includes/field.html")
def field(bound: BoundField) -> dict[str, Any]:
    """One form field with its label, help and errors tied together for screen readers."""
    described = []
    if bound.help_text:
        described.append(f"{bound.auto_id}_help")
    if bound.errors:
        described.append(f"{bound.auto_id}_errors")
    attrs: dict[str, str | bool] = {}
    if described:
        attrs["aria-describedby"] = " ".join(described)
    if bound.errors:
        attrs["aria-invalid"] = "true"
    return {
        "field": bound,
        "widget": bound.as_widget(attrs=attrs),
        "label": bound.label_tag(label_suffix=""),
        "is_checkbox": isinstance(bound.field.widget, CheckboxInput),
    }


register.filter("action_label", action_label)


@register.filter
def money(value: Decimal | None, places: int = 2) -> str:
    """An amount with ``places`` decimals, in the reader's number format; never via float."""
    if value is None:
        return "—"
    quantum = Decimal(1).scaleb(-int(places))
    return number_format(Decimal(value).quantize(quantum, rounding=ROUND_HALF_EVEN), int(places))


@register.filter
def bar_height(value: Decimal, peak: Decimal) -> str:
    """Height of a chart bar in whole percent of the tallest one, 0 to 100.

    Bars take it as a class (``bar--h37``): the Content-Security-Policy allows no style
    attribute, and the stylesheet has one class per percent.
    """
    if not peak:
        return "0"
    return str(min(100, max(0, int(Decimal(100) * Decimal(value) / Decimal(peak)))))


@register.filter
def status_class(status: str) -> str:
    return {
        "member": "ok",
        "approved": "ok",
        "applicant": "wait",
        "pending": "wait",
        "suspended": "warn",
        "declined": "bad",
        "left": "muted",
        # Newsletters: subscribers and campaigns.
        "confirmed": "ok",
        "sent": "ok",
        "scheduled": "wait",
        "sending": "wait",
        "paused": "warn",
        "bounced": "bad",
        "complained": "bad",
    }.get(status, "muted")
