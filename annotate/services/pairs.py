"""Aggregation: a comparison's live votes become its preference pair (or none)."""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from annotate.models import Choice, Comparison, JudgmentKind, PairKind, PreferencePair
from annotate.sql import pairs as sql_pairs


def pair_aggregate(*, comparison: Comparison) -> PreferencePair | None:
    """Majority vote of the comparison's live votes; an adjudication decides alone.

    Agreement is the share of votes that agree with the outcome (with an adjudication: the
    share of annotators who agreed with the reviewer).
    """
    judgments = sql_pairs.live_choices(comparison_id=comparison.pk)
    if not judgments:
        PreferencePair.objects.filter(comparison=comparison).delete()
        return None
    adjudications = [j for j in judgments if j[0] == JudgmentKind.ADJUDICATION]
    votes = Counter(choice for _, choice in (adjudications[-1:] or judgments))
    (top, top_count), *rest = votes.most_common()
    if rest and rest[0][1] == top_count:
        top = Choice.TIE  # a split vote is no preference
    voters = [j for j in judgments if j[0] == JudgmentKind.VOTE] or judgments
    agreement = Counter(choice for _, choice in voters)[top] / len(voters)
    if top == Choice.A:
        kind, chosen, rejected = (
            PairKind.PREFERENCE,
            comparison.response_a_id,
            comparison.response_b_id,
        )
    elif top == Choice.B:
        kind, chosen, rejected = (
            PairKind.PREFERENCE,
            comparison.response_b_id,
            comparison.response_a_id,
        )
    else:
        kind = PairKind.TIE if top == Choice.TIE else PairKind.BOTH_BAD
        chosen, rejected = comparison.response_a_id, comparison.response_b_id
    pair = PreferencePair(
        comparison=comparison,
        project_id=comparison.project_id,
        kind=kind,
        chosen_id=chosen,
        rejected_id=rejected,
        agreement=agreement,
        n_judgments=len(voters),
        updated_at=timezone.now(),
    )
    pair.pk = sql_pairs.pair_upsert(pair)
    pair._state.adding = False
    return pair
