"""Bad input never costs a server error: bodies nested too deep or too large, sent to every
endpoint of the API that takes one (as a lead and anonymously), and numbers too large for the
database or the engine, typed into the lead's forms or sent to the API. Each gets a clear
4xx naming what is wrong, nothing is logged as an error, and the database is left as it was."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from rest_framework import exceptions
from rest_framework.authtoken.models import Token

from alignment.engine.spec import SEED_MAX
from alignment.models import Round, TrainingRun
from alignment.services.model_versions import model_version_base_ensure
from annotate.models import Membership, Project
from annotate.services.projects import MAX_QUOTA
from core.api import MAX_JSON_DEPTH, StrictJSONParser
from core.http import MAX_ID
from tests.factories import RUN_FORM, client_make

pytestmark = pytest.mark.django_db

HUGE = 10**30
TOO_DEEP = {
    "arrays": "[" * 100_000 + "]" * 100_000,
    "objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "just over the bound": '{"rows": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}",
}


def _body_operations() -> list[tuple[str, str, str]]:
    """(operation id, method, path template) of every operation whose schema takes a body."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (operation["operationId"], method.upper(), path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in ("post", "put", "patch") and "requestBody" in operation
    ]


def _path(template: str, objects: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(objects[m.group(1)]), template)


def _send(
    path: str, method: str, body: str, *, token: str | None, content_type: str = "application/json"
) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Token {token}"} if token else {}
    return Client().generic(method, path, body, content_type=content_type, **headers)


def _database() -> dict[str, Any]:
    """Every table's row count, and the members' settings (a refused write changes neither)."""
    counts: dict[str, Any] = {
        model._meta.label: model._default_manager.count() for model in apps.get_models()
    }
    counts["memberships"] = sorted(
        Membership.objects.values_list("user_id", "role", "quota", "guideline_seen_version")
    )
    return counts


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    logged = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]
    assert not logged, logged


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and error["message"]
    return error


# Bodies ----------------------------------------------------------------------------------------


def test_it_lists_every_endpoint_that_takes_a_body() -> None:
    # The loops below are over this list: it must hold the token endpoint and the others.
    ids = {operation_id for operation_id, _, _ in _body_operations()}
    assert {
        "auth_token",
        "prompts_import",
        "judgments_create",
        "comparisons_skip",
        "guidelines_acknowledge",
        "rounds_start",
        "training_runs_start",
    } <= ids


@pytest.mark.parametrize("shape", list(TOO_DEEP))
def test_it_refuses_a_body_nested_too_deep_on_every_endpoint(
    shape: str, objects: dict[str, Any], lead: User, caplog: pytest.LogCaptureFixture
) -> None:
    token = Token.objects.get_or_create(user=lead)[0].key
    before = _database()
    for operation_id, method, template in _body_operations():
        path = _path(template, objects)
        for who in ("lead", "anonymous"):
            answer = _send(path, method, TOO_DEEP[shape], token=token if who == "lead" else None)
            if who == "anonymous" and operation_id != "auth_token":
                _error(answer, 401)  # refused before the body is read
                continue
            error = _error(answer, 400)
            assert error["code"] == "parse_error", (operation_id, who, error)
            assert f"nest more than {MAX_JSON_DEPTH} deep" in error["message"], error
    assert _database() == before
    _no_errors_logged(caplog)


def test_it_refuses_a_body_over_the_size_limit_on_every_endpoint(
    objects: dict[str, Any], lead: User, caplog: pytest.LogCaptureFixture
) -> None:
    token = Token.objects.get_or_create(user=lead)[0].key
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"rows": ["x" * limit]})
    before = _database()
    for operation_id, method, template in _body_operations():
        path = _path(template, objects)
        for who in ("lead", "anonymous"):
            answer = _send(path, method, body, token=token if who == "lead" else None)
            if who == "anonymous" and operation_id != "auth_token":
                _error(answer, 401)
                continue
            error = _error(answer, 413)
            assert error["code"] == "too_large", (operation_id, who, error)
            assert f"({limit} bytes)" in error["message"], error
    assert _database() == before
    _no_errors_logged(caplog)


def test_it_refuses_a_form_too_large_or_with_too_many_fields_at_the_token_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    form = "application/x-www-form-urlencoded"
    before = _database()
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    big = _send(
        "/api/v1/auth/token/", "POST", "username=" + "x" * limit, token=None, content_type=form
    )
    assert _error(big, 413)["code"] == "too_large"
    many = "&".join(f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    fields = _send("/api/v1/auth/token/", "POST", many, token=None, content_type=form)
    assert _error(fields, 400)["code"] == "too_many_fields"
    assert _database() == before
    _no_errors_logged(caplog)


def test_the_parser_takes_the_deepest_body_allowed_and_counts_no_bracket_in_a_string() -> None:
    def parse(text: str) -> Any:
        from io import BytesIO

        return StrictJSONParser().parse(BytesIO(text.encode()), "application/json", {})

    deepest = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse(deepest) is not None
    in_strings = json.dumps({"text": "[" * 1000 + '"\\' + "{" * 1000, "list": [["a"]]})
    assert parse(in_strings)["list"] == [["a"]]
    with pytest.raises(exceptions.ParseError, match="nest more than"):
        parse("[" + deepest + "]")
    with pytest.raises(exceptions.ParseError, match="not valid Unicode"):
        parse('["\\ud800"]')
    with pytest.raises(exceptions.ParseError, match="JSON parse error"):
        parse('{"a": NaN}')


# Numbers ---------------------------------------------------------------------------------------


def test_it_refuses_a_huge_quota_on_the_members_page(
    project: Project, lead: User, make_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    newcomer = make_user("newcomer", login=False)
    client = client_make(lead)
    before = _database()
    for quota in (HUGE, MAX_QUOTA + 1, 0):
        answer = client.post(
            f"/p/{project.slug}/members/",
            {"username": newcomer.username, "role": "annotator", "quota": str(quota)},
        )
        assert answer.status_code == 422
        assert list(answer.context["form"].errors) == ["quota"]
    assert _database() == before
    answer = client.post(
        f"/p/{project.slug}/members/",
        {"username": newcomer.username, "role": "annotator", "quota": str(MAX_QUOTA)},
    )
    assert answer.status_code == 302
    assert Membership.objects.get(project=project, user=newcomer).quota == MAX_QUOTA
    _no_errors_logged(caplog)


def test_it_refuses_huge_round_numbers_in_the_export_form_and_api(
    project: Project, lead: User, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_make(lead)
    for rounds in (str(HUGE), f"1, {MAX_ID + 1}", "9" * 1500):
        page = client.get(
            f"/p/{project.slug}/export/", {"format": "dpo", "rounds": rounds, "download": "data"}
        )
        assert page.status_code == 422
        assert page.context["form"].errors["rounds"] == [
            f"Rounds must be numbers between 0 and {MAX_ID}."
        ]
    token = Token.objects.get_or_create(user=lead)[0].key
    answer = Client().get(
        f"/api/v1/projects/{project.slug}/export/",
        {"rounds": str(HUGE)},
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    error = _error(answer, 400)
    assert (
        error["message"]
        == f"Invalid request: rounds: rounds must be numbers between 0 and {MAX_ID}."
    )
    assert list(error["fields"]) == ["rounds"]
    # The bound is the database's: the largest round number exports (nothing) without an error.
    largest = client.get(
        f"/p/{project.slug}/export/", {"format": "dpo", "rounds": str(MAX_ID), "download": "data"}
    )
    assert largest.status_code == 200 and b"".join(largest.streaming_content) == b""
    _no_errors_logged(caplog)


ROUND_FORM = {
    "pairing_strategy": "on_policy",
    "train_prompts": "2",
    "eval_prompts": "0",
    "samples_per_prompt": "2",
}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", HUGE, f"seed must be between 0 and {SEED_MAX}."),
        ("seed", SEED_MAX + 1, f"seed must be between 0 and {SEED_MAX}."),
        ("train_prompts", HUGE, "train_prompts must be between 0 and 100000."),
        ("samples_per_prompt", HUGE, "samples_per_prompt must be between 1 and 64."),
        ("max_new_tokens", HUGE, "max_new_tokens must be between 8 and 4096."),
        ("batch_size", HUGE, "batch_size must be between 1 and 256."),
    ],
)
def test_it_refuses_huge_numbers_on_the_round_page_and_in_the_api(
    field: str,
    value: int,
    message: str,
    project: Project,
    lead: User,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = model_version_base_ensure(project=project)
    client = client_make(lead)
    token = Token.objects.get_or_create(user=lead)[0].key
    before = _database()
    page = client.post(
        f"/p/{project.slug}/rounds/new/", {**ROUND_FORM, "policy": base.pk, field: str(value)}
    )
    assert page.status_code == 422
    assert page.context["form"].errors == {field: [message]}

    body: dict[str, Any] = {"policy_id": base.pk, "train_prompts": 2, "eval_prompts": 0}
    if field in ("seed", "max_new_tokens", "batch_size"):
        body["sampling"] = {field: value}
        fields: dict[str, Any] = {"sampling": {field: [message]}}
    else:
        body[field] = value
        fields = {field: [message]}
    answer = Client().post(
        f"/api/v1/projects/{project.slug}/rounds/",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    assert _error(answer, 400)["fields"] == fields
    assert _database() == before
    _no_errors_logged(caplog)


def test_it_refuses_a_huge_model_version_on_the_round_page(
    project: Project, lead: User, caplog: pytest.LogCaptureFixture
) -> None:
    model_version_base_ensure(project=project)
    page = client_make(lead).post(
        f"/p/{project.slug}/rounds/new/", {**ROUND_FORM, "policy": str(HUGE)}
    )
    assert page.status_code == 422 and list(page.context["form"].errors) == ["policy"]
    assert not Round.objects.exists()
    _no_errors_logged(caplog)


def test_it_refuses_huge_numbers_on_the_training_page_and_in_the_api(
    project: Project, lead: User, caplog: pytest.LogCaptureFixture
) -> None:
    base = model_version_base_ensure(project=project)
    client = client_make(lead)
    url = f"/p/{project.slug}/runs/new/"
    form = {**RUN_FORM, "base_version": base.pk, "data_scope": "rounds"}
    rounds = client.post(url, {**form, "rounds": f"1, {HUGE}"})
    assert rounds.status_code == 422
    assert rounds.context["form"].errors == {
        "rounds": [f"Rounds must be numbers between 0 and {MAX_ID}."]
    }
    seed = client.post(url, {**form, "rounds": "1", "seed": str(HUGE)})
    assert seed.status_code == 422
    assert seed.context["form"].errors == {"seed": [f"seed must be between 0 and {SEED_MAX}."]}

    token = Token.objects.get_or_create(user=lead)[0].key
    for body, fields in (
        (
            {"rounds": [HUGE]},
            {"rounds": {"0": [f"Ensure this value is less than or equal to {MAX_ID}."]}},
        ),
        (
            {"settings": {"seed": HUGE}},
            {"settings": {"seed": [f"seed must be between 0 and {SEED_MAX}."]}},
        ),
    ):
        answer = Client().post(
            f"/api/v1/projects/{project.slug}/training-runs/",
            json.dumps({"base_version_id": base.pk, **body}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token}",
        )
        assert _error(answer, 400)["fields"] == fields
    assert not TrainingRun.objects.exists()
    _no_errors_logged(caplog)


def test_the_largest_seed_the_forms_take_seeds_the_engine() -> None:
    # Generation seeds torch with the round's seed + the job's id + the batch's index; training
    # seeds numpy too (transformers.set_seed), which takes seeds below 2**32.
    import numpy as np
    import torch

    np.random.seed(SEED_MAX)
    torch.manual_seed(SEED_MAX + MAX_ID + 10_000)
