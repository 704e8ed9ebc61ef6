"""What the URL patterns, the forms and the API share: the request type, the id converter, the
bounds of a number typed into a form or a query (an id, a round number), and the answer when
the database is away (a restart, a failover): 503 with Retry-After, not a 500."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.urls import register_converter
from django_htmx.middleware import HtmxDetails

# A connection the database refused or dropped: it comes back on its own (Django opens a new
# connection for the next request), so the client is told to retry.
DATABASE_UNAVAILABLE = "The database is not answering (a restart?): try again in a few seconds."
RETRY_AFTER_SECONDS = 5


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` is the database being away rather than a statement failing."""
    from django.db import InterfaceError, OperationalError

    if isinstance(error, InterfaceError):
        return True
    if not isinstance(error, OperationalError):
        return False
    text = str(error).lower()
    return any(
        sign in text
        for sign in (
            "connection",
            "shutting down",
            "starting up",
            "administrator command",
            "server closed",
            "database is locked",
        )
    )


logger = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware:
    """A page whose request met the database away answers 503 with Retry-After (the API's own
    handler answers in its error shape)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unavailable(exception):
            return None
        logger.warning(
            "%s %s: the database is unavailable (%s)", request.method, request.path, exception
        )
        response = HttpResponse(DATABASE_UNAVAILABLE, status=503, content_type="text/plain")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


class AuthedRequest(HttpRequest):
    """A request that passed `login_required`, through django-htmx's middleware."""

    user: User
    htmx: HtmxDetails


class IdConverter:
    """A database id in a path: up to nine digits, so a longer number matches no URL (a 404)
    instead of overflowing the database's integer columns (a server error)."""

    regex = "[0-9]{1,9}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")


# The largest id or round number input may name: the database's integer columns hold no more
# (a larger one would overflow them: a server error, not an answer).
MAX_ID = 2**31 - 1

_NUMBER_LIST_RE = re.compile(r"^\s*[0-9]+\s*(,\s*[0-9]+\s*)*,?\s*$")


def numbers_parse(text: str, *, name: str, high: int = MAX_ID) -> tuple[int, ...]:
    """Comma-separated whole numbers ("1, 2"), in the order given; empty text: none.
    ValueError names ``name`` and the bounds (0 to ``high``)."""
    if not text.strip():
        return ()
    if not _NUMBER_LIST_RE.match(text):
        raise ValueError(f"{name} must be comma-separated whole numbers, e.g. 1, 2.")
    # Digits first: int() of a very long digit string is slow, and refused past 4300 digits.
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if any(len(part.lstrip("0")) > len(str(high)) or int(part) > high for part in parts):
        raise ValueError(f"{name} must be numbers between 0 and {high}.")
    return tuple(int(part) for part in parts)
