"""Error pages that need no database: the 500 page, and a 503 while the database is away."""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseServerError
from django.template import loader

RETRY_AFTER_S = 30


def server_error(request: HttpRequest) -> HttpResponse:
    """A request that failed because the database could not be reached gets a 503.

    During a failover (the standby being promoted, libpq finding the new primary) requests
    fail for some seconds; a 503 with Retry-After says "come back", which browsers, load
    balancers and scripts understand, where a 500 says the panel is broken. Rendered without
    the request: its context processors would ask the database again.
    """
    error = sys.exc_info()[1]
    if isinstance(error, OperationalError | InterfaceError):
        response = HttpResponse(loader.get_template("503.html").render(), status=503)
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
    return HttpResponseServerError(loader.get_template("500.html").render())
