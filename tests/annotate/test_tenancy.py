"""What one project's members can learn of, or do to, another project: idempotency keys are
each annotator's own, and guidelines are acknowledged only up to the version published."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from annotate.models import Comparison, Judgment, Membership, Project
from annotate.services.judgments import JudgmentRejected, judgment_submit
from annotate.services.projects import guideline_acknowledge, guideline_publish
from core.errors import ValidationFailed
from tests.factories import comparison_make, member_make, project_make

pytestmark = pytest.mark.django_db

KEY = "shared-key-0001"


def _post(user: User, path: str, body: dict[str, Any]) -> Any:
    token = Token.objects.get_or_create(user=user)[0].key
    return Client().post(
        "/api/v1" + path,
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )


@pytest.fixture
def other_project() -> Project:
    return project_make("other", prompts=["Another project's question?"], overlap=1)


@pytest.fixture
def other_annotator(other_project: Project) -> User:
    return member_make(other_project, "other-ann", login=False)


def _first_comparison(project: Project) -> Comparison:
    return comparison_make(project.prompts.filter(split="train").order_by("id").first())


def test_it_stores_both_judgments_of_annotators_in_two_projects_using_one_key(
    project: Project, annotator: User, other_project: Project, other_annotator: User
) -> None:
    mine, theirs = _first_comparison(project), _first_comparison(other_project)
    first = _post(
        other_annotator,
        f"/projects/{other_project.slug}/comparisons/{theirs.pk}/judgments/",
        {"choice": "left", "idempotency_key": KEY},
    )
    assert first.status_code == 201, first.content
    # The same key in another project: a judgment of its own, with nothing of the first.
    second = _post(
        annotator,
        f"/projects/{project.slug}/comparisons/{mine.pk}/judgments/",
        {"choice": "right", "idempotency_key": KEY},
    )
    assert second.status_code == 201, second.content
    body = second.json()
    assert body["id"] != first.json()["id"]
    assert (body["comparison_id"], body["annotator"], body["side"]) == (
        mine.pk,
        annotator.username,
        "right",
    )
    assert sorted(Judgment.objects.values_list("annotator__username", "comparison_id")) == sorted(
        [(annotator.username, mine.pk), (other_annotator.username, theirs.pk)]
    )
    for comparison in (mine, theirs):
        comparison.refresh_from_db()
        assert comparison.judgment_count == 1 and comparison.status == "complete"

    # Each retry still returns its own annotator's first judgment.
    again = _post(
        annotator,
        f"/projects/{project.slug}/comparisons/{mine.pk}/judgments/",
        {"choice": "left", "idempotency_key": KEY},
    )
    assert again.status_code == 201 and again.json()["id"] == body["id"]
    assert Judgment.objects.count() == 2


def test_a_key_is_refused_only_against_its_own_annotators_judgments(
    project: Project, annotator: User, other_project: Project, other_annotator: User
) -> None:
    theirs = _first_comparison(other_project)
    judgment_submit(
        comparison_id=theirs.pk, annotator=other_annotator, choice="a", idempotency_key=KEY
    )
    prompts = list(project.prompts.filter(split="train").order_by("id"))
    first, second = comparison_make(prompts[0]), comparison_make(prompts[1], seed=1)
    judgment_submit(comparison_id=first.pk, annotator=annotator, choice="a", idempotency_key=KEY)
    with pytest.raises(JudgmentRejected, match="another of your judgments"):
        judgment_submit(
            comparison_id=second.pk, annotator=annotator, choice="a", idempotency_key=KEY
        )
    assert Judgment.objects.filter(idempotency_key=KEY).count() == 2
    second.refresh_from_db()
    assert second.judgment_count == 0


def test_it_refuses_to_acknowledge_a_guideline_version_not_yet_published(
    project: Project, annotator: User
) -> None:
    path = f"/projects/{project.slug}/guidelines/"
    refused = _post(annotator, path, {"version": 2})
    assert refused.status_code == 422, refused.content
    error = refused.json()["error"]
    assert error["status"] == 422
    assert error["message"] == "There is no guideline version 2: the current one is 1."
    membership = Membership.objects.get(project=project, user=annotator)
    assert membership.guideline_seen_version == 0

    assert _post(annotator, path, {"version": 1}).json() == {"guideline_seen_version": 1}
    guideline_publish(project=project, body="Prefer shorter answers.", changes="Shorter.")
    assert _post(annotator, path, {"version": 2}).json() == {"guideline_seen_version": 2}
    with pytest.raises(ValidationFailed, match="no guideline version 3"):
        guideline_acknowledge(project=project, user=annotator, version=3)
    membership.refresh_from_db()
    assert membership.guideline_seen_version == 2
