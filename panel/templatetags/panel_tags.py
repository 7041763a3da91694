from __future__ import annotations

from typing import Any

from django import template
from django.forms import BoundField, CheckboxInput

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
def status_class(status: str) -> str:
    return {
        "member": "ok",
        "approved": "ok",
        "applicant": "wait",
        "pending": "wait",
        "suspended": "warn",
        "declined": "bad",
        "left": "muted",
    }.get(status, "muted")
