"""Schemathesis against the API's own OpenAPI schema: generated requests, valid and not, to
every operation, as a lead and as an annotator of a project holding one of every object.

Every answer must be no server error, carry a documented status and content type, and (for
the documented ones) match the schema. Path slugs and ids are pinned to the project's real
objects, so the bodies and queries reach the services instead of stopping at a 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.django_db(transaction=False)

APP = get_wsgi_application()
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# The schema view reads no database: loading it at collection gives one test per operation.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", APP)


@pytest.fixture(autouse=True)
def _connection_kept() -> Iterator[None]:
    """Schemathesis calls the WSGI app itself, whose request signals would close the test's
    database connection (and its transaction); Django's test client unhooks them the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _token(user: User) -> str:
    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
def tokens(lead: User, annotator: User) -> list[str]:
    return [_token(lead), _token(annotator)]


def _call_pinned(case: Any, pinned: dict[str, Any], tokens: list[str], capture: Any) -> None:
    """The case with its path parameters pinned to real objects, sent as a lead and then as
    an annotator, every answer checked."""
    for name in case.path_parameters or {}:
        if name in pinned:
            case.path_parameters[name] = pinned[name]
    # Jobs a request dispatches stay in their on_commit queue: no worker runs here.
    for token in tokens:  # a lead's, then an annotator's
        with capture(execute=False):
            case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_it_answers_every_generated_request_without_a_server_error(
    case: Any, objects: dict[str, Any], tokens: list[str], django_capture_on_commit_callbacks: Any
) -> None:
    _call_pinned(case, objects, tokens, django_capture_on_commit_callbacks)


# The operations that take a comparison again, with it pinned to a ranking (issue 21): its
# bodies (ranks, all bad) and its answers (the responses in the order shown).
ranking_operations = schema.include(
    operation_id=["assignment_next", "judgments_create", "comparisons_skip", "comparisons_retrieve"]
)


@ranking_operations.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_it_answers_every_generated_request_about_a_ranking_without_a_server_error(
    case: Any, objects: dict[str, Any], tokens: list[str], django_capture_on_commit_callbacks: Any
) -> None:
    pinned = {**objects, "comparison_id": objects["ranking_id"]}
    _call_pinned(case, pinned, tokens, django_capture_on_commit_callbacks)
