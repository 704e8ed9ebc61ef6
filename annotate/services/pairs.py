"""Aggregation: a comparison's live votes become its preference pair (or none)."""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from annotate import sql
from annotate.models import Choice, Comparison, JudgmentKind, PairKind, PreferencePair


def pair_aggregate(*, comparison: Comparison) -> PreferencePair | None:
    """Majority vote of the comparison's live votes; an adjudication decides alone.

    Agreement is the share of votes that agree with the outcome (with an adjudication: the
    share of annotators who agreed with the reviewer).
    """
    # (kind, choice) of the live judgments, oldest first; plain SQL: it runs for most votes.
    judgments = sql.rows(
        f"SELECT kind, choice FROM {sql.JUDGMENT} WHERE comparison_id = %s"
        " AND superseded_at IS NULL AND kind <> 'recheck' ORDER BY id",
        [comparison.pk],
    )
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
    row = sql.one(
        f"INSERT INTO {sql.PREFERENCE_PAIR} (comparison_id, project_id, kind, chosen_id,"
        " rejected_id, agreement, n_judgments, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (comparison_id) DO UPDATE SET kind = excluded.kind,"
        " chosen_id = excluded.chosen_id, rejected_id = excluded.rejected_id,"
        " agreement = excluded.agreement, n_judgments = excluded.n_judgments,"
        " updated_at = excluded.updated_at RETURNING id",
        [
            comparison.pk,
            comparison.project_id,
            kind,
            chosen,
            rejected,
            agreement,
            pair.n_judgments,
            sql.timestamp(pair.updated_at),
        ],
    )
    assert row is not None
    pair.pk = row[0]
    pair._state.adding = False
    return pair
