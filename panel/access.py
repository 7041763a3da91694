"""Access rules shared by every member-facing view."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, cast

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils.translation import gettext as _

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


def books_required(view: View) -> View:
    """The commune's books: members in good standing, and the staff who keep the books.

    The statutes give what is left over (or missing) at each close to the commune, split
    equally among the members, one share each: the books are the owners' to read, not the
    public's and not every signed-up account's. An applicant has not joined, a suspended
    member's rights rest until reinstated (the share and its part of the result stay theirs,
    on their own statements), and staff read them with the right that opens the staff books
    (``panel.view_billingperiod``), not because they are staff.
    """

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user = cast(User, request.user)  # login_required ran first
        if user.is_staff and user.has_perm("panel.view_billingperiod"):
            return view(request, *args, **kwargs)
        membership = Membership.objects.filter(user=user).only("status").first()
        if membership is None or membership.status != MembershipStatus.MEMBER:
            context = {
                "membership": membership,
                "reason": _("Only members in good standing may see the commune's books."),
            }
            return render(request, "panel/members_only.html", context, status=403)
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
