"""Rankings: a comparison of K responses, its implied pairs, and what one annotator's ranking
writes on them (the rules of annotate.ranking, on the models)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from django.db import transaction

from annotate.models import Choice, Comparison, Judgment, JudgmentKind, Purpose, Response
from annotate.ranking import K_MAX, K_MIN, RankingInvalid, ranks_check, shown_order
from core.errors import ValidationFailed


def ranking_create(
    *,
    responses: Sequence[Response],
    round_number: int,
    purpose: str = Purpose.TRAIN,
    pairing_strategy: str = "",
    selection: dict[str, Any] | None = None,
    rng: random.Random | None = None,
) -> Comparison:
    """A ranking of `responses` (K_MIN to K_MAX answers to one prompt) and its K(K-1)/2 implied
    comparisons, one per two responses in the order given."""
    if not K_MIN <= len(responses) <= K_MAX:
        raise ValidationFailed(
            f"A ranking orders {K_MIN} to {K_MAX} responses, not {len(responses)}."
        )
    if len({r.pk for r in responses}) != len(responses):
        raise ValidationFailed("A ranking needs different responses.")
    if len({r.prompt_id for r in responses}) != 1:
        raise ValidationFailed("Every response of a ranking must answer the same prompt.")
    prompt = responses[0].prompt
    common = {
        "project_id": prompt.project_id,
        "prompt": prompt,
        "round_number": round_number,
        "purpose": purpose,
        "pairing_strategy": pairing_strategy,
    }
    with transaction.atomic():
        ranking = Comparison.objects.create(
            response_a=responses[0],
            response_b=responses[1],
            responses=[r.pk for r in responses],
            # Each annotator gets an order of their own (shown_order); this is no side.
            left_is_a=True,
            selection=selection or {},
            **common,
        )
        Comparison.objects.bulk_create(
            Comparison(
                response_a=first,
                response_b=second,
                ranking=ranking,
                left_is_a=(rng or random.SystemRandom()).random() < 0.5,
                **common,
            )
            for first, second in combinations(responses, 2)
        )
    return ranking


def ranking_shown(*, comparison: Comparison, annotator_id: int, left_is_a: bool) -> list[int]:
    """The response ids of a ranking in the order this annotator is shown them: their own
    order, reversed when `left_is_a` is False (a swapped re-check)."""
    return shown_order(
        list(comparison.responses), seed=f"{comparison.pk}:{annotator_id}", reverse=not left_is_a
    )


def ranks_validate(*, shown: list[int], ranks: Sequence[Any]) -> list[int]:
    """The ranks of the responses in the order `shown`, made dense; RankingInvalid naming
    what is wrong (a rank missing, one too many, not a whole number from 1 to K)."""
    if not isinstance(ranks, list | tuple) or len(ranks) != len(shown):
        raise RankingInvalid(
            f"Give one rank per response shown, in the order shown: {len(shown)} ranks."
        )
    checked = ranks_check(dict(zip(shown, ranks, strict=True)), shown=shown)
    return [checked[response_id] for response_id in shown]


def implied_choice(*, ranks: dict[int, int], all_bad: bool, a: int, b: int) -> Choice:
    if all_bad:
        return Choice.BOTH_BAD
    if ranks[a] == ranks[b]:
        return Choice.TIE
    return Choice.A if ranks[a] < ranks[b] else Choice.B


def implied_judgments(*, judgment: Judgment, implied: Sequence[Comparison]) -> list[Judgment]:
    """The ranking judgment's pair by pair: one implied judgment on each implied comparison,
    as the annotator ranked (or all "both bad"), `left_was_a` saying whether `a` was shown
    before `b`."""
    ranks = dict(zip(judgment.shown, judgment.ranks, strict=False))
    position = {response_id: index for index, response_id in enumerate(judgment.shown)}
    all_bad = judgment.choice == Choice.BOTH_BAD
    return [
        Judgment(
            comparison=pair,
            project_id=judgment.project_id,
            annotator_id=judgment.annotator_id,
            kind=JudgmentKind.IMPLIED,
            choice=implied_choice(
                ranks=ranks, all_bad=all_bad, a=pair.response_a_id, b=pair.pair_b_id
            ),
            left_was_a=position[pair.response_a_id] < position[pair.pair_b_id],
            guideline_id=judgment.guideline_id,
            source=judgment,
            created_at=judgment.created_at,
            updated_at=judgment.updated_at,
        )
        for pair in implied
    ]
