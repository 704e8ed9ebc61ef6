"""The request type of logged-in pages, for the type checker."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class AuthedRequest(HttpRequest):
    """A request that passed `login_required`, through django-htmx's middleware."""

    user: User
    htmx: HtmxDetails
