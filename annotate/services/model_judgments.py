"""A model judge's answers that are not votes: suggestions and fill-ins. (A judge that votes
takes the queue and `judgment_submit` like anyone.) Only a member of kind "model" makes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError
from django.db.models import Count, F
from django.utils import timezone

from annotate import sql
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
    MemberKind,
    Membership,
)
from annotate.services.judgments import JudgmentRejected, choice_validate, votes_changed
from annotate.services.projects import guideline_current

MAX_MODEL_NOTE_CHARS = 1000


def model_member(*, project_id: int, user_id: int) -> bool:
    """Whether the user is a model judge of the project (a member of kind "model")."""
    return Membership.objects.filter(
        project_id=project_id, user_id=user_id, kind=MemberKind.MODEL
    ).exists()


def _model_member_check(*, comparison: Comparison, judge: User) -> None:
    if not model_member(project_id=comparison.project_id, user_id=judge.pk):
        raise JudgmentRejected("Only a model judge of this project makes suggestions and fill-ins.")


def _model_judgment(
    *, comparison: Comparison, judge: User, kind: JudgmentKind, choice: str, note: str
) -> Judgment:
    if comparison.is_ranking or comparison.ranking_id is not None or comparison.is_rating:
        raise JudgmentRejected("A model judge answers pairs, not rankings or ratings.")
    choice_value = choice_validate(project=comparison.project, choice=choice)
    now = timezone.now()
    return Judgment(
        comparison=comparison,
        project_id=comparison.project_id,
        annotator=judge,
        kind=kind,
        choice=choice_value,
        left_was_a=comparison.left_is_a,
        rationale=note[:MAX_MODEL_NOTE_CHARS],
        guideline=guideline_current(project=comparison.project),
        created_at=now,
        updated_at=now,
    )


def judgment_suggest(*, comparison_id: int, judge: User, choice: str, note: str = "") -> Judgment:
    """Store a model judge's answer as a suggestion: annotators see it after their own vote;
    it never counts toward the overlap or the pair. One live suggestion per judge and
    comparison (a second is refused)."""
    with sql.atomic():
        comparison = Comparison.objects.select_related("project").get(pk=comparison_id)
        _model_member_check(comparison=comparison, judge=judge)
        if comparison.status == ComparisonStatus.RETIRED:
            raise JudgmentRejected("This comparison has been retired.")
        judgment = _model_judgment(
            comparison=comparison,
            judge=judge,
            kind=JudgmentKind.SUGGESTION,
            choice=choice,
            note=note,
        )
        try:
            with sql.atomic():
                judgment.save(force_insert=True)
        except IntegrityError:
            raise JudgmentRejected("This judge has already suggested an answer here.") from None
    return judgment


def judgment_fill(*, comparison_id: int, judge: User, choice: str, note: str = "") -> Judgment:
    """A model judge's answer to a comparison no person reached (open, no vote, no one holding
    it, not a gold item): it decides the comparison alone, which completes it. A reviewer's
    adjudication replaces it; sending the comparison back supersedes it."""
    with sql.atomic():
        comparison = (
            Comparison.objects.select_for_update().select_related("project").get(pk=comparison_id)
        )
        _model_member_check(comparison=comparison, judge=judge)
        if comparison.is_gold:
            raise JudgmentRejected("A gold item is for people: a model does not fill it in.")
        held = Lease.objects.filter(
            comparison=comparison, state=LeaseState.HELD, expires_at__gt=timezone.now()
        ).exists()
        if comparison.status != ComparisonStatus.OPEN or comparison.judgment_count or held:
            raise JudgmentRejected("A person has reached this comparison: it is theirs to judge.")
        judgment = _model_judgment(
            comparison=comparison, judge=judge, kind=JudgmentKind.FILL, choice=choice, note=note
        )
        judgment.save(force_insert=True)
        votes_changed(comparison=comparison, delta=0)
    return judgment


def model_judge_counts(*, comparison_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Which model judges' answers count in these comparisons' pairs, and how: as votes
    toward the overlap, or as fill-ins deciding a comparison alone."""
    counts = (
        Judgment.objects.filter(
            comparison_id__in=list(comparison_ids),
            superseded_at__isnull=True,
            kind__in=[JudgmentKind.VOTE, JudgmentKind.IMPLIED, JudgmentKind.FILL],
            annotator__memberships__kind=MemberKind.MODEL,
            annotator__memberships__project_id=F("project_id"),
        )
        .values("annotator__first_name", "annotator__username", "kind")
        .annotate(n=Count("id"))
    )
    judges: dict[str, dict[str, Any]] = {}
    for row in counts:
        name = row["annotator__first_name"] or row["annotator__username"]
        entry = judges.setdefault(name, {"judge": name, "votes": 0, "fills": 0})
        entry["fills" if row["kind"] == JudgmentKind.FILL else "votes"] += row["n"]
    return sorted(judges.values(), key=lambda j: j["judge"])
