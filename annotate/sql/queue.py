"""The claim's statements: which comparisons an annotator may be handed, the leases that hold
them, and the row locks a claim takes (annotate.queue holds the rules that use them)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from annotate import sql
from annotate.models import Comparison, Prompt, Response

# `c` is the comparison. This annotator's live vote on it; parameter: the annotator id.
JUDGED_BY = (
    f"EXISTS (SELECT 1 FROM {sql.JUDGMENT} j WHERE j.comparison_id = c.id AND j.annotator_id = %s"
    " AND j.kind = 'vote' AND j.superseded_at IS NULL)"
)
# The leases that reserve a slot of the comparison for someone else right now (a swapped
# re-check reserves none: it is no vote); parameters: now, False, the annotator id.
LIVE_OTHERS = (
    f"(SELECT count(*) FROM {sql.LEASE} o WHERE o.comparison_id = c.id AND o.state = 'held'"
    " AND o.expires_at > %s AND o.is_recheck = %s AND o.annotator_id <> %s)"
)


def live_others_params(*, annotator_id: int, now: datetime) -> list[Any]:
    return [sql.timestamp(now), False, annotator_id]


# Neither judged (a live vote) nor skipped by the annotator, as two sets built once per
# statement (hashed), not a probe per row walked: a walk passes every open pair they judged.
# Parameters: project id, annotator id, annotator id.
_UNTOUCHED = (
    f" AND c.id NOT IN (SELECT j.comparison_id FROM {sql.JUDGMENT} j"
    " WHERE j.project_id = %s AND j.annotator_id = %s AND j.kind = 'vote'"
    " AND j.superseded_at IS NULL) AND c.id NOT IN (SELECT s.comparison_id"
    f" FROM {sql.LEASE} s WHERE s.annotator_id = %s AND s.state = 'skipped')"
)

# The columns an assignment is drawn from: the comparison, its prompt and both responses (a
# rating's one).
_PAIR_COLUMNS = (
    "c.id, c.project_id, c.prompt_id, c.response_a_id, c.response_b_id, c.left_is_a,"
    " c.round_number, c.purpose, c.gold_choice, c.status, c.judgment_count, c.responses,"
    " p.messages, p.html, p.html_version, ra.text, ra.html, ra.html_version,"
    " rb.text, rb.html, rb.html_version"
)
_PAIR_JOINS = (
    f" JOIN {sql.PROMPT} p ON p.id = c.prompt_id JOIN {sql.RESPONSE} ra ON ra.id = c.response_a_id"
    f" LEFT JOIN {sql.RESPONSE} rb ON rb.id = c.response_b_id"  # a rating has none
)
_COMPARISON_FIELDS = (
    "id",
    "project_id",
    "prompt_id",
    "response_a_id",
    "response_b_id",
    "left_is_a",
    "round_number",
    "purpose",
    "gold_choice",
    "status",
    "judgment_count",
    "responses",
)


def _comparison_from_row(row: Sequence[Any]) -> Comparison:
    """A comparison with its prompt and responses, as `_PAIR_COLUMNS` reads them."""
    comparison = sql.instance(Comparison, dict(zip(_COMPARISON_FIELDS, row, strict=False)))
    messages, html_p, version_p, text_a, html_a, version_a, text_b, html_b, version_b = row[
        len(_COMPARISON_FIELDS) :
    ]
    prompt_id, project_id = comparison.prompt_id, comparison.project_id
    comparison.prompt = sql.instance(
        Prompt,
        {"id": prompt_id, "project_id": project_id, "messages": messages}
        | {"html": html_p, "html_version": version_p},
    )
    comparison.response_a = sql.instance(
        Response,
        {"id": comparison.response_a_id, "prompt_id": prompt_id, "text": text_a}
        | {"html": html_a, "html_version": version_a},
    )
    comparison.response_b = (
        None
        if comparison.response_b_id is None
        else sql.instance(
            Response,
            {"id": comparison.response_b_id, "prompt_id": prompt_id, "text": text_b}
            | {"html": html_b, "html_version": version_b},
        )
    )
    return comparison


def available_ids(
    *, project_id: int, overlap: int, annotator_id: int, now: datetime, limit: int
) -> list[int]:
    """Ordinary (non-gold) comparisons this annotator may be handed now, best first: open, not
    judged or skipped by them, and with a slot that neither votes nor others' leases take.

    Shaped for an index walk in the queue's order (`comparison_queue_order`) that stops at
    `limit` matches; the per-row tests are index probes.
    """
    return [
        row[0]
        for row in sql.rows(
            f"SELECT c.id FROM {sql.COMPARISON} c"
            " WHERE c.project_id = %s AND c.status = 'open' AND c.judgment_count < %s"
            f" AND c.gold_choice = '' AND c.ranking_id IS NULL{_UNTOUCHED} AND c.judgment_count + {LIVE_OTHERS} < %s"
            " ORDER BY c.round_number DESC, c.judgment_count DESC, c.id LIMIT %s",
            [
                project_id,
                overlap,
                project_id,
                annotator_id,
                annotator_id,
                *live_others_params(annotator_id=annotator_id, now=now),
                overlap,
                limit,
            ],
        )
    ]


def gold_ids(*, project_id: int, annotator_id: int, limit: int) -> list[int]:
    """Gold items of the project, not retired, that this annotator has neither judged nor
    skipped (everyone answers each gold item once, outside the overlap)."""
    return [
        row[0]
        for row in sql.rows(
            f"SELECT c.id FROM {sql.COMPARISON} c WHERE c.project_id = %s AND c.gold_choice <> ''"
            f" AND c.status <> 'retired' AND c.ranking_id IS NULL{_UNTOUCHED}"
            " ORDER BY c.id LIMIT %s",
            [project_id, project_id, annotator_id, annotator_id, limit],
        )
    ]


def recheck_candidates(
    *,
    project_id: int,
    annotator_id: int,
    limit: int,
    gap_items: int,
    gap_since: datetime | None,
) -> list[tuple[int, bool]]:
    """(comparison id, left_was_a) of this annotator's live votes on ordinary comparisons they
    have not been re-checked on yet, newest first; only votes with at least `gap_items` of
    their judgments in the project after them, or (with `gap_since`) made before that time."""
    return [
        (row[0], bool(row[1]))
        for row in sql.rows(
            f"SELECT j.comparison_id, j.left_was_a FROM {sql.JUDGMENT} j"
            f" JOIN {sql.COMPARISON} c ON c.id = j.comparison_id"
            " WHERE j.project_id = %s AND j.annotator_id = %s AND j.kind = 'vote'"
            " AND j.superseded_at IS NULL AND c.gold_choice = '' AND j.comparison_id NOT IN"
            f" (SELECT r.comparison_id FROM {sql.LEASE} r WHERE r.annotator_id = %s"
            " AND r.is_recheck = %s)"
            f" AND (%s = 0 OR j.id < (SELECT o.id FROM {sql.JUDGMENT} o WHERE o.project_id = %s"
            " AND o.annotator_id = %s ORDER BY o.id DESC LIMIT 1 OFFSET %s)"
            " OR j.created_at <= %s)"
            " ORDER BY j.id DESC LIMIT %s",
            [
                project_id,
                annotator_id,
                annotator_id,
                True,
                gap_items,
                project_id,
                annotator_id,
                max(gap_items - 1, 0),
                gap_since,
                limit,
            ],
        )
    ]


def lease_held(
    *, project_id: int, annotator_id: int, now: datetime
) -> tuple[Comparison, bool, bool] | None:
    """(comparison, left_is_a, is_recheck) of the live lease this annotator holds in the
    project, if its comparison still wants it: open, or (a gold item or a re-check) not
    retired."""
    row = sql.one(
        f"SELECT {_PAIR_COLUMNS}, l.left_is_a, l.is_recheck FROM {sql.LEASE} l"
        f" JOIN {sql.COMPARISON} c ON c.id = l.comparison_id{_PAIR_JOINS}"
        " WHERE l.annotator_id = %s AND l.state = 'held' AND l.expires_at > %s"
        " AND c.project_id = %s AND (c.status = 'open' OR ((l.is_recheck = %s"
        " OR c.gold_choice <> '') AND c.status <> 'retired'))"
        " ORDER BY l.updated_at DESC LIMIT 1",
        [annotator_id, sql.timestamp(now), project_id, True],
    )
    if row is None:
        return None
    return _comparison_from_row(row[:-2]), bool(row[-2]), bool(row[-1])


def lease_take(
    *,
    comparison_id: int,
    project_id: int,
    annotator_id: int,
    now: datetime,
    expires_at: datetime,
    left_is_a: bool,
    is_recheck: bool,
) -> None:
    """Hold the comparison for this annotator until `expires_at`; one held lease per annotator
    and project, so taking this one releases any other."""
    at, until = sql.timestamp(now), sql.timestamp(expires_at)
    sql.batch(
        [
            (
                f"UPDATE {sql.LEASE} SET state = 'released', updated_at = %s"
                " WHERE annotator_id = %s AND state = 'held' AND comparison_id <> %s"
                f" AND comparison_id IN (SELECT id FROM {sql.COMPARISON} WHERE project_id = %s)",
                [at, annotator_id, comparison_id, project_id],
            ),
            (
                f"INSERT INTO {sql.LEASE} (comparison_id, annotator_id, state, expires_at,"
                " skip_reason, left_is_a, is_recheck, created_at, updated_at) VALUES (%s, %s,"
                " 'held', %s, '', %s, %s, %s, %s) ON CONFLICT (comparison_id, annotator_id) DO"
                " UPDATE SET state = 'held', expires_at = excluded.expires_at, skip_reason = '',"
                " left_is_a = excluded.left_is_a, is_recheck = excluded.is_recheck,"
                " updated_at = excluded.updated_at",
                [comparison_id, annotator_id, until, left_is_a, is_recheck, at, at],
            ),
        ]
    )


def comparison_get(
    *, comparison_id: int, lock: bool = False, skip_locked: bool = False
) -> Comparison | None:
    """The comparison with its prompt and responses; with `lock`, its row locked (the joined
    prompt and responses are not), skipping a row another transaction holds if `skip_locked`."""
    row = sql.one(
        f"SELECT {_PAIR_COLUMNS} FROM {sql.COMPARISON} c{_PAIR_JOINS} WHERE c.id = %s"
        + (sql.for_update(skip_locked=skip_locked, of="c") if lock else ""),
        [comparison_id],
    )
    return _comparison_from_row(row) if row is not None else None


def slot_state(*, comparison_id: int, annotator_id: int, now: datetime) -> tuple[bool, int]:
    """(judged by this annotator, live leases of others) of a comparison, read in a statement
    of its own (so, under a row lock, with a snapshot taken after the lock)."""
    row = sql.one(
        f"SELECT {JUDGED_BY}, {LIVE_OTHERS} FROM {sql.COMPARISON} c WHERE c.id = %s",
        [annotator_id, *live_others_params(annotator_id=annotator_id, now=now), comparison_id],
    )
    assert row is not None
    return bool(row[0]), int(row[1])
