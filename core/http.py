"""What the URL patterns and logged-in views share: the request type and the id converter."""

from __future__ import annotations

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
