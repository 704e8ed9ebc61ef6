"""The API's token endpoint."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.auth import lockout_response, token_expired
from core.api import BODY_ERRORS, ErrorSerializer, StrictJSONParser


class TokenApi(ObtainAuthToken):
    # DRF's view takes forms too; its JSON is parsed as every other endpoint's (core.api).
    parser_classes = (FormParser, MultiPartParser, StrictJSONParser)

    @extend_schema(
        operation_id="auth_token",
        tags=["auth"],
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer("TokenOut", {"token": serializers.CharField()}),
            400: OpenApiResponse(ErrorSerializer, description="Wrong username or password."),
            413: BODY_ERRORS[413],
            415: BODY_ERRORS[415],
            429: OpenApiResponse(
                ErrorSerializer,
                description="Too many failed logins for this account or address (Retry-After).",
            ),
        },
        summary="Your API token, for your username and password",
        description="The same token until it expires (API_TOKEN_DAYS), then a new one.",
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except ValidationError:
            # django-axes marks the request it was given, which is DRF's, not Django's: its
            # middleware never sees the mark, so the answer is given here.
            if getattr(request, "axes_locked_out", False):
                return lockout_response(request._request, None, None)  # type: ignore[return-value]
            raise
        user = serializer.validated_data["user"]
        with transaction.atomic():
            token, _ = Token.objects.select_for_update().get_or_create(user=user)
            if token_expired(token):
                token.delete()
                token = Token.objects.create(user=user)
        return Response({"token": token.key})
