"""Authentication: the backend (Django's, with the per-request user lookup in plain SQL), the
API's expiring tokens, and what a login locked out for guessing answers (django-axes counts).

Every request loads its user from the session's user id; through the ORM that lookup was
about a sixth of a judgment's CPU in the web process (see annotate/sql). Passwords,
permissions and everything else are Django's ModelBackend, unchanged.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.db.models.signals import pre_save
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from annotate.sql import access as sql_access

logger = logging.getLogger(__name__)


class Backend(ModelBackend):
    def get_user(self, user_id: Any) -> User | None:
        try:
            user = sql_access.user_get(user_id=int(user_id))
        except (TypeError, ValueError):
            return None  # a session naming no valid id is an anonymous one
        return user if user is not None and self.user_can_authenticate(user) else None


# API tokens -------------------------------------------------------------------------------------


def token_expired(token: Token) -> bool:
    days: int = settings.API_TOKEN_DAYS
    return bool(token.created < timezone.now() - timedelta(days=days))


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token, refused once API_TOKEN_DAYS have passed since it was issued."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        user, token = super().authenticate_credentials(key)
        if token_expired(token):
            raise exceptions.AuthenticationFailed(
                f"The token expired ({settings.API_TOKEN_DAYS} days after it was issued): "
                "get a new one from POST /api/v1/auth/token/."
            )
        return user, token


@receiver(pre_save, sender=User, dispatch_uid="annotate.auth.tokens_revoke")
def tokens_revoke(sender: type[User], instance: User, **kwargs: Any) -> None:
    """A new password or a deactivation revokes the user's API token (sessions end by
    themselves: Django's session hash covers the password, and the backend refuses inactive
    users). A hash upgraded on login (a new Django's iteration count) revokes it too."""
    if instance.pk is None or kwargs.get("raw"):
        return
    update_fields = kwargs.get("update_fields")
    if update_fields is not None and not {"password", "is_active"} & set(update_fields):
        return
    before = User.objects.filter(pk=instance.pk).values("password", "is_active").first()
    if before is None:
        return
    if before["password"] != instance.password or (before["is_active"] and not instance.is_active):
        deleted, _ = Token.objects.filter(user_id=instance.pk).delete()
        if deleted:
            logger.info("API token of user %s revoked (password or active changed)", instance.pk)


# Logins locked out for guessing (django-axes; settings AXES_*) ---------------------------------


def client_address(request: HttpRequest) -> str:
    """The client's address: the connection's, or, behind TRUSTED_PROXY_COUNT proxies that
    each append to X-Forwarded-For, the one the outermost of them saw."""
    count: int = settings.TRUSTED_PROXY_COUNT
    if count > 0:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [a for a in forwarded if a]
        if len(forwarded) >= count:
            return str(forwarded[-count])
    return str(request.META.get("REMOTE_ADDR", ""))


def lockout_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return (
        f"Too many failed logins for this account or from this address: logins are refused "
        f"until {minutes} minutes have passed without a failed one."
    )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any
) -> HttpResponse:
    """429 with Retry-After: JSON in the API's error shape under /api/, else the login page."""
    retry_after = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    response: HttpResponse
    if request.path.startswith("/api/"):
        error = {"status": 429, "code": "locked_out", "message": lockout_message()}
        response = JsonResponse({"error": error}, status=429)
    else:
        context = {"lockout_message": lockout_message(), "next": request.POST.get("next", "")}
        response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = retry_after
    return response
