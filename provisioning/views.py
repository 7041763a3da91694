from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from panel.access import member_required


@member_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "panel/coming.html", {"section": _("Hosting")})
