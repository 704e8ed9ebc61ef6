"""What the URL patterns, the forms and the API share: the request type, the id converter, and
the bounds of a number typed into a form or a query (an id, a round number)."""

from __future__ import annotations

import re

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.urls import register_converter
from django_htmx.middleware import HtmxDetails


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
