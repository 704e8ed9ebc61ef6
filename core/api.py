"""The API's plumbing that every app's views share: the one error shape and its handler, the
body parser that refuses what cannot be stored, paging, and the 404/500 answers under /api/.

No views here: DRF imports the parser and the handler while it builds APIView.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from core.errors import ValidationFailed

logger = logging.getLogger(__name__)


# Errors ----------------------------------------------------------------------------------------


class ErrorBodySerializer(serializers.Serializer[Any]):
    status = serializers.IntegerField()
    code = serializers.CharField(help_text="invalid, rejected, import_refused, not_found, ...")
    message = serializers.CharField()
    # The API's key; it shadows DRF's `Serializer.fields`, which this schema-only class never uses.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.JSONField(), required=False, help_text="Per-field messages."
    )
    rows = serializers.ListField(
        child=inline_serializer(
            "RowError", {"line": serializers.IntegerField(), "message": serializers.CharField()}
        ),
        required=False,
        help_text="Import: the rows refused, with their line (1-based position in the list).",
    )


class ErrorSerializer(serializers.Serializer[Any]):
    error = ErrorBodySerializer()


# What the views declare they may answer besides their own success, for the schema.
ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="The request is malformed."),
    401: OpenApiResponse(ErrorSerializer, description="No or an invalid token."),
    404: OpenApiResponse(ErrorSerializer, description="No such object, or not yours to see."),
}
REJECTED = {422: OpenApiResponse(ErrorSerializer, description="Refused by the project's rules.")}
# What a view that reads a body may answer besides.
BODY_ERRORS = {
    **ERRORS,
    415: OpenApiResponse(ErrorSerializer, description="The body is not JSON."),
}


def error_response(status_code: int, code: str, message: str, **extra: Any) -> Response:
    return Response(
        {"error": {"status": status_code, "code": code, "message": message, **extra}},
        status=status_code,
    )


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for name, inner in detail.items():
            text = _first_message(inner)
            return text if name in ("non_field_errors", "detail") else f"{name}: {text}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error as {"error": {status, code, message, fields?, rows?}}."""
    if isinstance(exc, ValidationFailed):
        return error_response(422, exc.code, str(exc), **exc.details())
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("API request failed", exc_info=exc)
        return error_response(500, "server_error", "The server failed to answer this request.")
    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        fields = response.data if isinstance(response.data, dict) else {"detail": response.data}
        body = error_response(
            response.status_code,
            "invalid",
            f"Invalid request: {_first_message(response.data)}",
            fields=fields,
        )
    else:
        codes = exc.get_codes()
        body = error_response(
            response.status_code,
            codes if isinstance(codes, str) else "error",
            _first_message(response.data),
        )
    for name, value in response.items():  # WWW-Authenticate, Retry-After, Allow
        body[name] = value
    return body


# Paging ----------------------------------------------------------------------------------------

# Ids in paths and filters: larger numbers name nothing (and would overflow the database).
MAX_ID = 2**31 - 1


class PageQuery(serializers.Serializer[Any]):
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)
    offset = serializers.IntegerField(required=False, min_value=0, max_value=10**9, default=0)


def paged_serializer(name: str, item: type[serializers.Serializer[Any]]) -> Any:
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "offset": serializers.IntegerField(),
            "results": item(many=True),
        },
    )


# Parsing ---------------------------------------------------------------------------------------


class StrictJSONParser(JSONParser):
    """JSON whose strings are all valid Unicode: a lone surrogate ("\\ud800") parses in Python
    but cannot be stored, so it is refused here with the other malformed bodies."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        _unicode_check(data)
        return data


def _unicode_check(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise exceptions.ParseError(
                "JSON parse error - a string is not valid Unicode."
            ) from None
    elif isinstance(value, dict):
        for key, inner in value.items():
            _unicode_check(key)
            _unicode_check(inner)
    elif isinstance(value, list):
        for inner in value:
            _unicode_check(inner)


# Django's own 404 and 500 (a URL no pattern matches, an error outside DRF): JSON under /api/,
# the site's pages elsewhere. config/urls.py names these as handler404 and handler500.


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        return _json_error(404, "not_found", "No such API endpoint.")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return _json_error(500, "server_error", "The server failed to answer this request.")
    return defaults.server_error(request)


def _json_error(status_code: int, code: str, message: str) -> JsonResponse:
    body = {"error": {"status": status_code, "code": code, "message": message}}
    return JsonResponse(body, status=status_code)
