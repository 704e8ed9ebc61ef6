"""Comparisons: created from two responses, and reviewed (adjudicated, sent back, made gold)."""

from __future__ import annotations

import random
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from annotate import sql
from annotate.models import (
    PAIR_CHOICES,
    RATING_CHOICES,
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    LeaseState,
    PreferencePair,
    Purpose,
    Response,
)
from annotate.ranking import RankingInvalid
from annotate.services.judgments import (
    MAX_RATIONALE_CHARS,
    JudgmentRejected,
    choice_validate,
    live_decisions,
    votes_changed,
)
from annotate.services.projects import guideline_current
from annotate.services.rankings import implied_choice, ranks_validate
from core.errors import ValidationFailed


def comparison_create(
    *,
    response_a: Response,
    response_b: Response,
    round_number: int,
    purpose: str = Purpose.TRAIN,
    pairing_strategy: str = "",
    rng: random.Random | None = None,
    gold_choice: str = "",
    selection: dict[str, Any] | None = None,
) -> Comparison:
    if response_a.pk == response_b.pk:
        raise ValidationFailed("A comparison needs two different responses.")
    if response_a.prompt_id != response_b.prompt_id:
        raise ValidationFailed("Both responses of a comparison must answer the same prompt.")
    prompt = response_a.prompt
    return Comparison.objects.create(
        project_id=prompt.project_id,
        prompt=prompt,
        response_a=response_a,
        response_b=response_b,
        left_is_a=(rng or random.SystemRandom()).random() < 0.5,
        round_number=round_number,
        purpose=purpose,
        pairing_strategy=pairing_strategy,
        gold_choice=gold_choice,
        selection=selection or {},
    )


def comparison_adjudicate(
    *, comparison: Comparison, reviewer: User, choice: str, rationale: str = ""
) -> Judgment:
    """A reviewer's decision: it wins aggregation; the annotators' judgments stay as they are."""
    with sql.atomic():
        comparison = (
            Comparison.objects.select_for_update().select_related("project").get(pk=comparison.pk)
        )
        if comparison.is_ranking:
            raise JudgmentRejected(
                "A ranking is decided pair by pair: adjudicate the pairs it implies."
            )
        choice_value = answer_validate(comparison=comparison, choice=choice)
        if len(rationale) > MAX_RATIONALE_CHARS:
            raise JudgmentRejected(f"A note is at most {MAX_RATIONALE_CHARS} characters.")
        now = timezone.now()
        live_decisions(comparison).update(superseded_at=now, updated_at=now)
        judgment = Judgment.objects.create(
            comparison=comparison,
            project_id=comparison.project_id,
            annotator=reviewer,
            kind=JudgmentKind.ADJUDICATION,
            choice=choice_value,
            left_was_a=comparison.left_is_a,
            rationale=rationale.strip(),
            guideline=guideline_current(project=comparison.project),
        )
        votes_changed(comparison=comparison, delta=0)
    return judgment


def answer_validate(*, comparison: Comparison, choice: str) -> Choice:
    """A reviewer's answer to a comparison: good or bad for a rating, else a pair's choice."""
    if comparison.is_rating:
        if choice not in (Choice.GOOD, Choice.BAD):
            raise JudgmentRejected(f"A rating is decided good or bad, not {choice!r}.")
        return Choice(choice)
    return choice_validate(project=comparison.project, choice=choice)


def comparison_send_back(*, comparison: Comparison, reviewer: User) -> Comparison:
    """Re-open a comparison for fresh judgments; the old ones stay on record, superseded. A
    pair implied by a ranking sends the whole ranking back (the ranking is what is judged)."""
    with transaction.atomic():
        comparison = (
            Comparison.objects.select_for_update()
            .select_related("project")
            .get(pk=comparison.ranking_id or comparison.pk)
        )
        if comparison.is_gold:
            raise ValidationFailed("A gold item is answered by everyone; it cannot be sent back.")
        now = timezone.now()
        superseded = Judgment.objects.filter(
            Q(comparison=comparison) | Q(comparison__ranking=comparison),
            superseded_at__isnull=True,
        ).update(superseded_at=now, updated_at=now)
        if not superseded:
            raise ValidationFailed("This comparison has no judgments to send back.")
        # Released leases let the same annotators be offered the pair again.
        comparison.leases.update(state=LeaseState.RELEASED, is_recheck=False, updated_at=now)
        comparison.judgment_count = 0
        comparison.status = ComparisonStatus.OPEN
        comparison.sent_back_count = F("sent_back_count") + 1
        comparison.save(update_fields=["judgment_count", "status", "sent_back_count"])
        comparison.implied.update(judgment_count=0, status=ComparisonStatus.OPEN)
        PreferencePair.objects.filter(
            Q(comparison=comparison) | Q(comparison__ranking=comparison)
        ).delete()
    comparison.refresh_from_db()
    return comparison


def comparison_gold_set(*, comparison: Comparison, gold_choice: str) -> Comparison:
    """Make a comparison a gold item with a known answer ("" turns it back into a normal one):
    a pair's a choice, a rating's good or bad."""
    with sql.atomic():
        comparison = (
            Comparison.objects.select_for_update().select_related("project").get(pk=comparison.pk)
        )
        allowed = [value for value, _ in RATING_CHOICES if comparison.is_rating] or [
            value for value, _ in PAIR_CHOICES
        ]
        if gold_choice and gold_choice not in allowed:
            raise ValidationFailed(
                f"Unknown gold answer {gold_choice!r}; expected one of {allowed}."
            )
        comparison.gold_choice = gold_choice
        comparison.save(update_fields=["gold_choice"])
        if not gold_choice:
            votes_changed(comparison=comparison, delta=0)
    return comparison


def ranking_gold_set(*, comparison: Comparison, ranks: list[int] | None) -> Comparison:
    """Make a ranking a gold item with a known order: `ranks` of its responses in their stored
    order (1 the best, ties level), or None to make it an ordinary item again. Everyone ranks
    a gold ranking, outside the overlap; each implied pair carries the answer the known order
    gives it, so an annotator's ranking is scored pair by pair (annotate.quality)."""
    with sql.atomic():
        comparison = (
            Comparison.objects.select_for_update().select_related("project").get(pk=comparison.pk)
        )
        if not comparison.is_ranking:
            raise ValidationFailed("Only a ranking takes a known order; a pair takes an answer.")
        known: dict[int, int] = {}
        if ranks is not None:
            try:
                known = dict(
                    zip(
                        comparison.responses,
                        ranks_validate(shown=comparison.responses, ranks=ranks),
                        strict=True,
                    )
                )
            except RankingInvalid as error:
                raise ValidationFailed(str(error)) from None
        comparison.gold_choice = Choice.RANKED if known else ""
        comparison.save(update_fields=["gold_choice"])
        for pair in comparison.implied.all():
            pair.gold_choice = (
                implied_choice(ranks=known, all_bad=False, a=pair.response_a_id, b=pair.pair_b_id)
                if known
                else ""
            )
            pair.save(update_fields=["gold_choice"])
        if not known:
            votes_changed(comparison=comparison, delta=0)
    return comparison
