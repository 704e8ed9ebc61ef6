"""The API's token endpoint."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import BODY_ERRORS, ErrorSerializer


class TokenApi(ObtainAuthToken):
    @extend_schema(
        operation_id="auth_token",
        tags=["auth"],
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer("TokenOut", {"token": serializers.CharField()}),
            400: OpenApiResponse(ErrorSerializer, description="Wrong username or password."),
            415: BODY_ERRORS[415],
        },
        summary="Your API token, for your username and password",
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)
