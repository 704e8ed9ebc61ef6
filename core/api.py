"""The API's plumbing that every app's views share: the one error shape and its handler, the
body parser that refuses what cannot be stored, paging, and the 404/500 answers under /api/.

No views here: DRF imports the parser and the handler while it builds APIView.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, parsers, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.utils.json import strict_constant

from core.errors import ValidationFailed
from core.http import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS, database_unavailable

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
# What a view limited by ExpensiveRequestThrottle may answer besides.
THROTTLED = {
    429: OpenApiResponse(
        ErrorSerializer, description="Too many of these requests: wait Retry-After seconds."
    )
}
# What a view that reads a body may answer besides.
BODY_ERRORS = {
    **ERRORS,
    413: OpenApiResponse(
        ErrorSerializer, description="The body is larger than the server takes (its message says)."
    ),
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
    if isinstance(exc, DatabaseError) and database_unavailable(exc):
        logger.warning("API request: the database is unavailable (%s)", exc)
        unavailable = error_response(503, "unavailable", DATABASE_UNAVAILABLE)
        unavailable["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return unavailable
    if isinstance(exc, RequestDataTooBig):
        return error_response(413, "too_large", _too_large_message())
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return error_response(400, "too_many_fields", f"The body has too many fields: {exc}")
    if isinstance(exc, SuspiciousOperation):
        # What Django answers 400 to outside DRF (a malformed multipart body, ...).
        return error_response(400, "bad_request", "The request is malformed.")
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


def _too_large_message() -> str:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    size = f"{limit / 2**20:.1f} MB ({limit} bytes)" if limit else "the server's limit"
    return f"The request body is larger than the limit of {size}."


# Throttling ------------------------------------------------------------------------------------


class ExpensiveRequestThrottle(UserRateThrottle):
    """Per user, the requests that start work or read a whole dataset (imports, exports,
    rounds, training runs): API_EXPENSIVE_RATE. A view names them in `expensive_methods`;
    its other methods pass. Counted in the default cache: across the web processes when
    CACHE_URL names a shared one, else per process."""

    scope = "expensive"

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method not in getattr(view, "expensive_methods", ()):
            return True
        return super().allow_request(request, view)


# Paging ----------------------------------------------------------------------------------------


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


# How deep a body's arrays and objects may nest. No body of this API needs more than a few
# levels; far deeper, Python's JSON decoder runs out of stack (a RecursionError, not an answer).
MAX_JSON_DEPTH = 64

# A string (escapes included) or a bracket: what the depth check steps through.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class StrictJSONParser(parsers.JSONParser):
    """JSON that can be stored: nested at most MAX_JSON_DEPTH deep, and strings that are all
    valid Unicode (a lone surrogate, "\\ud800", parses in Python but cannot be stored). Both
    are refused here with the other malformed bodies (400)."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        # DRF's charset check (a text codec, or a 400); newer than the stubs.
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        try:
            text = codecs.getreader(encoding)(stream).read()
        except ValueError as exc:  # UnicodeDecodeError among them
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        _depth_check(text)
        try:
            data = json.loads(text, parse_constant=strict_constant if self.strict else None)
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:  # the depth check makes this unreachable; kept as a 400 anyway
            raise exceptions.ParseError(_too_deep()) from None
        _unicode_check(data)
        return data


def _too_deep() -> str:
    return f"JSON parse error - arrays and objects nest more than {MAX_JSON_DEPTH} deep."


def _depth_check(text: str) -> None:
    """Refuse text whose brackets nest deeper than MAX_JSON_DEPTH (brackets inside strings
    do not count), before the decoder recurses into it."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return  # too few brackets to nest that deep: the common, small body
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise exceptions.ParseError(_too_deep())
        elif token in ("]", "}"):
            depth -= 1


def _unicode_check(data: Any) -> None:
    # A stack, not recursion: the depth is bounded above, but a walk need not rely on that.
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise exceptions.ParseError(
                    "JSON parse error - a string is not valid Unicode."
                ) from None
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


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
