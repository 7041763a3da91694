"""Access rules shared by every member-facing view."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, cast

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render

from panel.models import Membership, MembershipStatus, User

View = Callable[..., HttpResponseBase]


def member_required(view: View) -> View:
    """Logged in and a member in good standing: only members may order services."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user = cast(User, request.user)  # login_required ran first
        membership = Membership.objects.filter(user=user).only("status").first()
        if membership is None or membership.status != MembershipStatus.MEMBER:
            return render(
                request, "panel/members_only.html", {"membership": membership}, status=403
            )
        return view(request, *args, **kwargs)

    return wrapped


def permission_required(perm: str) -> Callable[[View], View]:
    """Staff views: logged in, staff, and holding ``perm``; anyone else gets the 403 page."""

    def decorator(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not (request.user.is_staff and request.user.has_perm(perm)):
                return render(request, "403.html", status=403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
