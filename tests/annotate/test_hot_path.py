"""The judging hot path speaks plain SQL (annotate/sql): it must give what the ORM gives."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate import sql
from annotate.access import access_project
from annotate.models import Comparison, Judgment, Lease, Project
from annotate.queue import AVAILABLE_CAP, assignment_next, available_ids
from annotate.selectors import annotator_progress
from annotate.services.comparisons import comparison_adjudicate
from annotate.services.judgments import ComparisonMissing, judgment_submit
from annotate.services.projects import project_settings_update
from tests.factories import client_make, comparison_make, project_make

pytestmark = pytest.mark.django_db


def _many(project: Project, n: int) -> list[Comparison]:
    prompt = project.prompts.first()
    assert prompt is not None
    return [
        comparison_make(prompt, (f"Answer {i}.", f"Other answer {i}."), seed=i) for i in range(n)
    ]


def test_it_loads_the_project_as_the_orm_does(project: Project, annotator: User) -> None:
    project_settings_update(
        project=project, criteria=["accuracy", "tone"], reason_tags=["shorter"], allow_tie=False
    )
    fast = access_project(user=annotator, slug=project.slug)
    slow = Project.objects.get(pk=project.pk)
    for field in Project._meta.concrete_fields:
        assert getattr(fast, field.attname) == getattr(slow, field.attname), field.name
    assert fast.criteria == ["accuracy", "tone"] and fast.allow_tie is False
    assert isinstance(fast.created_at, type(slow.created_at))


def test_it_reads_a_claimed_pair_with_its_texts_and_defers_the_rest(
    project: Project, annotator: User
) -> None:
    (made,) = _many(project, 1)
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None
    got = assignment.comparison
    assert got.pk == made.pk and got.left_is_a is made.left_is_a
    assert got.prompt.messages == made.prompt.messages
    assert {assignment.left.text, assignment.right.text} == {"Answer 0.", "Other answer 0."}
    # Not read by the claim, loaded on first access: the instance is a whole comparison.
    assert got.pairing_strategy == made.pairing_strategy
    assert got.created_at == Comparison.objects.get(pk=made.pk).created_at


def test_it_counts_available_pairs_up_to_the_cap(project: Project, annotator: User) -> None:
    project_settings_update(project=project, overlap=2)
    _many(project, AVAILABLE_CAP + 5)
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None and assignment.available == AVAILABLE_CAP + 1
    progress = annotator_progress(project=project, annotator=annotator)
    assert progress.remaining == AVAILABLE_CAP + 1 and progress.remaining_label == "50+"
    assert progress.judged == 0


def test_it_counts_exactly_under_the_cap_and_follows_the_votes(
    project: Project, annotator: User
) -> None:
    pairs = _many(project, 3)
    judgment_submit(comparison_id=pairs[0].pk, annotator=annotator, choice="a")
    progress = annotator_progress(project=project, annotator=annotator)
    assert (progress.judged, progress.remaining, progress.remaining_label) == (1, 2, "2")
    assert progress.guideline_version == 1 and progress.guideline_seen_version == 0
    assert pairs[0].pk not in available_ids(
        project=project, annotator=annotator, now=timezone.now()
    )


def test_it_keeps_the_project_on_every_judgment(
    project: Project, annotator: User, lead: User
) -> None:
    (pair,) = _many(project, 1)
    vote = judgment_submit(comparison_id=pair.pk, annotator=annotator, choice="b")
    decision = comparison_adjudicate(comparison=pair, reviewer=lead, choice="a")
    stored = {j.pk: j.project_id for j in Judgment.objects.all()}
    assert stored == {vote.pk: project.pk, decision.pk: project.pk}
    # The in-memory judgment a submit returns is the stored one.
    again = Judgment.objects.get(pk=vote.pk)
    assert (again.choice, again.criteria, again.reason_tags) == (vote.choice, {}, [])
    assert again.created_at == vote.created_at and again.guideline_id == vote.guideline_id


def test_it_refuses_a_comparison_of_another_project_as_missing(
    project: Project, annotator: User, lead: User
) -> None:
    other = project_make(
        "other",
        guidelines="Be kind.",
        created_by=lead,
        annotators=[annotator],
        prompts=["Elsewhere?"],
    )
    (foreign,) = _many(other, 1)
    with pytest.raises(ComparisonMissing):
        judgment_submit(comparison_id=foreign.pk, annotator=annotator, project=project, choice="a")
    client = client_make(annotator)
    answer = client.post(f"/p/{project.slug}/annotate/{foreign.pk}/judge/", {"choice": "left"})
    assert answer.status_code == 404
    assert not Judgment.objects.exists()


def test_it_stores_timestamps_as_the_orm_would(project: Project, annotator: User) -> None:
    (pair,) = _many(project, 1)
    assignment_next(project=project, annotator=annotator)
    lease = pair.leases.get(annotator=annotator)
    assert lease.expires_at > timezone.now() and lease.updated_at <= timezone.now()
    # The lease the claim wrote is found again by a later claim (a refresh keeps the pair).
    again = assignment_next(project=project, annotator=annotator)
    assert again is not None and again.comparison.pk == pair.pk


def test_a_batch_of_writes_runs_in_order_returns_the_last_row_and_fails_whole(
    project: Project, annotator: User
) -> None:
    (comparison,) = _many(project, 1)
    now = sql.timestamp(timezone.now())
    lease = (
        f"INSERT INTO {sql.LEASE} (comparison_id, annotator_id, state, expires_at, skip_reason,"
        " left_is_a, is_recheck, created_at, updated_at)"
        " VALUES (%s, %s, 'held', %s, '', %s, %s, %s, %s) RETURNING id",
        [comparison.pk, annotator.pk, now, True, False, now, now],
    )
    skip = (
        f"UPDATE {sql.LEASE} SET skip_reason = %s WHERE comparison_id = %s",
        ["later", comparison.pk],
    )
    count = (
        f"UPDATE {sql.COMPARISON} SET judgment_count = judgment_count + 1 WHERE id = %s",
        [comparison.pk],
    )
    # The UPDATE after the INSERT sees its row; the row returned is the last statement's.
    assert sql.batch([lease, skip, count]) is None
    assert Lease.objects.get(comparison=comparison).skip_reason == "later"
    lease_id = Lease.objects.get(comparison=comparison).pk
    again = (lease[0].replace("RETURNING id", "ON CONFLICT DO NOTHING RETURNING id"), lease[1])
    assert sql.batch([count, again]) is None  # nothing inserted: no row
    Lease.objects.all().delete()
    (returned,) = sql.batch([count, lease]) or (None,)
    assert returned == Lease.objects.get(comparison=comparison).pk != lease_id
    comparison.refresh_from_db()
    assert comparison.judgment_count == 3
    # A failing statement fails the batch; in a transaction nothing of it stays.
    with pytest.raises(IntegrityError), transaction.atomic():
        sql.batch([count, lease, count])
    comparison.refresh_from_db()
    assert comparison.judgment_count == 3
    assert Lease.objects.filter(comparison=comparison).count() == 1
