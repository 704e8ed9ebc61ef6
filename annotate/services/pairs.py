"""Aggregation: a comparison's live votes become its preference pair (or none).

A pair exists only for a decided comparison. Votes that split evenly (one left, one right)
decide nothing: the comparison is *undecided*, has no pair (so nothing exports, snapshots or
trains on it) and waits in the review queue until an adjudication or another vote decides it.
A tie is only what annotators chose. A rating's votes decide its response desirable (good) or
undesirable (bad) the same way: a level split is undecided.
"""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from annotate.models import Choice, Comparison, JudgmentKind, PairKind, PreferencePair
from annotate.sql import pairs as sql_pairs


def pair_aggregate(*, comparison: Comparison) -> PreferencePair | None:
    """Majority vote of the comparison's live votes; an adjudication decides alone, and so
    does a model's fill-in (it is only made where no person voted). None (and no pair
    stored) without votes, or when the most voted choices are level (undecided).

    Agreement is the share of votes that agree with the outcome (with an adjudication: the
    share of annotators who agreed with the reviewer).
    """
    judgments = sql_pairs.live_choices(comparison_id=comparison.pk)
    if not judgments:
        PreferencePair.objects.filter(comparison=comparison).delete()
        return None
    deciding = [j for j in judgments if j[0] == JudgmentKind.ADJUDICATION] or [
        j for j in judgments if j[0] == JudgmentKind.FILL
    ]
    votes = Counter(choice for _, choice in (deciding[-1:] or judgments))
    top = votes_decided(votes)
    if top is None:
        PreferencePair.objects.filter(comparison=comparison).delete()
        return None
    voters = [j for j in judgments if j[0] == JudgmentKind.VOTE] or judgments
    agreement = Counter(choice for _, choice in voters)[top] / len(voters)
    if top in (Choice.GOOD, Choice.BAD):  # a rating: its one response, desirable or not
        kind = PairKind.GOOD if top == Choice.GOOD else PairKind.BAD
        chosen = rejected = comparison.response_a_id
    elif top == Choice.A:
        kind, chosen, rejected = (
            PairKind.PREFERENCE,
            comparison.response_a_id,
            comparison.pair_b_id,
        )
    elif top == Choice.B:
        kind, chosen, rejected = (
            PairKind.PREFERENCE,
            comparison.pair_b_id,
            comparison.response_a_id,
        )
    else:
        kind = PairKind.TIE if top == Choice.TIE else PairKind.BOTH_BAD
        chosen, rejected = comparison.response_a_id, comparison.pair_b_id
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


def votes_decided(votes: Counter[str]) -> str | None:
    """The choice with the most votes, or None when two or more are level (undecided)."""
    (top, top_count), *rest = votes.most_common()
    if rest and rest[0][1] == top_count:
        return None
    return top
