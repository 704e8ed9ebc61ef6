"""The submit's statements: the comparison locked, what the submit must know about it under
that lock, the judgment written, and the comparison's vote count kept true."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from annotate import sql
from annotate.models import Comparison, Judgment
from annotate.sql.queue import JUDGED_BY, LIVE_OTHERS, live_others_params

# What a submit reads of the comparison it locks.
_LOCKED_FIELDS = (
    "id",
    "project_id",
    "status",
    "judgment_count",
    "gold_choice",
    "left_is_a",
    "response_a_id",
    "response_b_id",
    # For whoever builds on a decided pair (annotate.signals.pair_decided).
    "prompt_id",
    "round_number",
    "selection",
    # A ranking's responses (annotate.services.rankings).
    "responses",
)

Statement = tuple[str, Sequence[Any]]


def comparison_lock(*, comparison_id: int) -> Comparison | None:
    """The comparison's row, locked until the transaction ends (the fields a submit needs)."""
    row = sql.one(
        f"SELECT {', '.join(_LOCKED_FIELDS[1:])} FROM {sql.COMPARISON} WHERE id = %s"
        + sql.for_update(),
        [comparison_id],
    )
    if row is None:
        return None
    return sql.instance(Comparison, dict(zip(_LOCKED_FIELDS, (comparison_id, *row), strict=True)))


@dataclass(frozen=True)
class SubmitState:
    """What a submit must know, read after the comparison's lock (so with a snapshot that sees
    every commit before it: a twin of the request or another claim may have committed)."""

    lease_state: str | None  # this annotator's lease on the comparison, if any
    lease_left_is_a: bool | None
    lease_is_recheck: bool
    lease_live: bool
    twin_id: int | None  # this annotator's judgment already stored under the idempotency key
    guideline_id: int | None  # the project's current guideline
    live_others: int  # slots others' live leases hold
    judged_already: bool  # this annotator's live vote on it
    suggested: bool  # a model judge's live suggestion on it (shown after the vote)


def submit_state(
    *, comparison_id: int, annotator_id: int, idempotency_key: str | None, now: datetime
) -> SubmitState:
    at = sql.timestamp(now)
    row = sql.one(
        "SELECT l.state, l.left_is_a, l.is_recheck, l.expires_at > %s,"
        # A key is its annotator's own: another's same key is no twin (and must not be seen).
        f" (SELECT t.id FROM {sql.JUDGMENT} t WHERE t.annotator_id = %s"
        " AND t.idempotency_key = %s),"
        f" (SELECT g.id FROM {sql.GUIDELINE} g WHERE g.project_id = c.project_id"
        f" ORDER BY g.version DESC LIMIT 1), {LIVE_OTHERS}, {JUDGED_BY},"
        f" EXISTS (SELECT 1 FROM {sql.JUDGMENT} s WHERE s.comparison_id = c.id"
        " AND s.kind = 'suggestion' AND s.superseded_at IS NULL)"
        f" FROM {sql.COMPARISON} c LEFT JOIN {sql.LEASE} l"
        " ON l.comparison_id = c.id AND l.annotator_id = %s WHERE c.id = %s",
        [
            at,
            annotator_id,
            idempotency_key,
            *live_others_params(annotator_id=annotator_id, now=now),
            annotator_id,
            annotator_id,
            comparison_id,
        ],
    )
    assert row is not None
    state, left_is_a, recheck, live, twin, guideline, others, judged, suggested = row
    return SubmitState(
        lease_state=state,
        lease_left_is_a=None if left_is_a is None else bool(left_is_a),
        lease_is_recheck=bool(recheck),
        lease_live=bool(live),
        twin_id=twin,
        guideline_id=guideline,
        live_others=int(others),
        judged_already=bool(judged),
        suggested=bool(suggested),
    )


def suggestions(*, comparison_id: int) -> list[tuple[str, str]]:
    """(judge's name, choice) of the model judges' live suggestions on a comparison."""
    return [
        (name or username, choice)
        for name, username, choice in sql.rows(
            f"SELECT u.first_name, u.username, s.choice FROM {sql.JUDGMENT} s"
            f" JOIN {sql.USER} u ON u.id = s.annotator_id WHERE s.comparison_id = %s"
            " AND s.kind = 'suggestion' AND s.superseded_at IS NULL ORDER BY s.id",
            [comparison_id],
        )
    ]


def lease_submitted(*, comparison_id: int, annotator_id: int, now: datetime) -> Statement:
    """The write that closes this annotator's lease on the comparison."""
    return (
        f"UPDATE {sql.LEASE} SET state = 'submitted', updated_at = %s"
        " WHERE comparison_id = %s AND annotator_id = %s",
        [sql.timestamp(now), comparison_id, annotator_id],
    )


def judgment_insert(judgment: Judgment) -> Statement:
    """The INSERT of a judgment built in memory (every field set), returning its id."""
    return (
        f"INSERT INTO {sql.JUDGMENT} (comparison_id, project_id, annotator_id, kind, choice,"
        " left_was_a, strength, score, criteria, rationale, reason_tags, time_spent_ms,"
        " guideline_id, idempotency_key, shown, ranks, superseded_at, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s)"
        " RETURNING id",
        [
            judgment.comparison_id,
            judgment.project_id,
            judgment.annotator_id,
            judgment.kind,
            judgment.choice,
            judgment.left_was_a,
            judgment.strength,
            judgment.score,
            json.dumps(judgment.criteria),
            judgment.rationale,
            json.dumps(judgment.reason_tags),
            judgment.time_spent_ms,
            judgment.guideline_id,
            judgment.idempotency_key,
            json.dumps(judgment.shown),
            json.dumps(judgment.ranks),
            sql.timestamp(judgment.created_at),
            sql.timestamp(judgment.updated_at),
        ],
    )


def comparison_counted(*, comparison: Comparison) -> Statement:
    """The write of a locked comparison's vote count and status, as they are in memory."""
    return (
        f"UPDATE {sql.COMPARISON} SET judgment_count = %s, status = %s WHERE id = %s",
        [comparison.judgment_count, comparison.status, comparison.pk],
    )
