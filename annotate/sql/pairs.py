"""Aggregation's statements: it runs for most votes."""

from __future__ import annotations

from annotate import sql
from annotate.models import PreferencePair


def live_choices(*, comparison_id: int) -> list[tuple[str, str]]:
    """(kind, choice) of the comparison's live votes, adjudications and fill-ins, oldest
    first."""
    return [
        (kind, choice)
        for kind, choice in sql.rows(
            f"SELECT kind, choice FROM {sql.JUDGMENT} WHERE comparison_id = %s"
            " AND superseded_at IS NULL AND kind NOT IN ('recheck', 'suggestion') ORDER BY id",
            [comparison_id],
        )
    ]


def pair_upsert(pair: PreferencePair) -> int:
    """Write the comparison's pair (one per comparison); its id."""
    row = sql.one(
        f"INSERT INTO {sql.PREFERENCE_PAIR} (comparison_id, project_id, kind, chosen_id,"
        " rejected_id, agreement, n_judgments, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (comparison_id) DO UPDATE SET kind = excluded.kind,"
        " chosen_id = excluded.chosen_id, rejected_id = excluded.rejected_id,"
        " agreement = excluded.agreement, n_judgments = excluded.n_judgments,"
        " updated_at = excluded.updated_at RETURNING id",
        [
            pair.comparison_id,
            pair.project_id,
            pair.kind,
            pair.chosen_id,
            pair.rejected_id,
            pair.agreement,
            pair.n_judgments,
            sql.timestamp(pair.updated_at),
        ],
    )
    assert row is not None
    return int(row[0])
