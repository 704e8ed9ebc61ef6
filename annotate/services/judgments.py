"""Judgments: an annotator's vote on a comparison, taken under its lease and the overlap, and\nundone while it is the annotator's last."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from annotate import sql
from annotate.access import project_role
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    LeaseState,
    PreferencePair,
    Project,
    RationaleMode,
)
from annotate.queue import JUDGED_BY_SQL, LIVE_OTHERS_SQL, lease_take
from annotate.services.pairs import pair_aggregate
from core.errors import ValidationFailed

MAX_TIME_SPENT_MS = 24 * 3600 * 1000


STRENGTHS = {1: "slightly better", 2: "clearly better", 3: "much better"}


MAX_RATIONALE_CHARS = 4000


SIDE_CHOICES = {"left", "right", "tie", "both_bad"}


class JudgmentRejected(ValidationFailed):
    """The judgment cannot be taken (not allowed, already complete, ...)."""


class ComparisonMissing(JudgmentRejected):
    """No such comparison, or not in the project given."""


def choice_from_side(*, left_is_a: bool, side: str) -> Choice:
    """What a click on a side means for the comparison's responses, given the layout shown."""
    if side not in SIDE_CHOICES:
        raise JudgmentRejected(f"Unknown choice {side!r}; expected one of {sorted(SIDE_CHOICES)}.")
    if side == "left":
        return Choice.A if left_is_a else Choice.B
    if side == "right":
        return Choice.B if left_is_a else Choice.A
    return Choice(side)


def judgment_submit(
    *,
    comparison_id: int,
    annotator: User,
    project: Project | None = None,
    choice: str = "",
    side: str = "",
    idempotency_key: str | None = None,
    strength: int | None = None,
    criteria: Mapping[str, str] | None = None,
    rationale: str = "",
    reason_tags: Sequence[str] = (),
    time_spent_ms: int | None = None,
    now: datetime | None = None,
) -> Judgment:
    """Record one annotator's judgment of a comparison.

    Give either `choice` (a / b / tie / both_bad) or `side` (left / right / tie / both_bad, in
    the layout this annotator's lease shows; criteria values are sides too). With `project`,
    a comparison of another project is refused as missing (ComparisonMissing). A retried
    submit with the same idempotency key returns the first judgment unchanged. Votes never
    exceed the project's overlap (gold items excepted: everyone answers them); one live vote
    per (annotator, comparison). A held swapped re-check lease makes this a re-check, which
    never counts as a vote. A vote from someone without a live lease is taken only while the
    pair has a slot that no live lease of another annotator holds.

    The judging hot path: plain SQL (annotate/sql.py), five statements for a vote in three
    round trips (the writes batched).
    """
    if bool(choice) == bool(side):
        raise JudgmentRejected("Give exactly one of a choice (a/b/tie/both_bad) or a side.")
    now = now or timezone.now()
    at = sql.timestamp(now)
    try:
        with transaction.atomic():
            row = sql.one(
                f"SELECT {', '.join(_LOCKED_FIELDS[1:])} FROM {sql.COMPARISON} WHERE id = %s"
                + sql.for_update(),
                [comparison_id],
            )
            if row is None or (project is not None and row[0] != project.pk):
                where = " in this project" if project is not None else ""
                raise ComparisonMissing(f"There is no comparison {comparison_id}{where}.")
            comparison = sql.instance(
                Comparison, dict(zip(_LOCKED_FIELDS, (comparison_id, *row), strict=True))
            )
            if project is None:
                project = Project.objects.get(pk=comparison.project_id)
            comparison.project = project
            if project_role(user=annotator, project=project) is None:
                raise JudgmentRejected("You are not a member of this project.")
            # Read after the lock, so with a snapshot that sees every commit before it: a twin
            # of this request or another claim may have committed while we waited.
            state = sql.one(
                "SELECT l.state, l.left_is_a, l.is_recheck, l.expires_at > %s,"
                f" (SELECT t.id FROM {sql.JUDGMENT} t WHERE t.idempotency_key = %s),"
                f" (SELECT g.id FROM {sql.GUIDELINE} g WHERE g.project_id = c.project_id"
                f" ORDER BY g.version DESC LIMIT 1), {LIVE_OTHERS_SQL}, {JUDGED_BY_SQL}"
                f" FROM {sql.COMPARISON} c LEFT JOIN {sql.LEASE} l"
                " ON l.comparison_id = c.id AND l.annotator_id = %s WHERE c.id = %s",
                [
                    at,
                    idempotency_key,
                    at,
                    False,
                    annotator.pk,
                    annotator.pk,
                    annotator.pk,
                    comparison_id,
                ],
            )
            assert state is not None
            lease_state, lease_left_is_a, lease_recheck, lease_live = state[:4]
            twin_id, guideline_id, live_others, judged_already = state[4:]
            if twin_id is not None:
                twin = Judgment.objects.get(pk=twin_id)
                if twin.annotator_id != annotator.pk or twin.comparison_id != comparison_id:
                    raise JudgmentRejected("This idempotency key belongs to another judgment.")
                return twin
            held = lease_state == LeaseState.HELD
            holding = held and bool(lease_live)
            is_recheck = holding and bool(lease_recheck)
            left_is_a = bool(lease_left_is_a) if held else comparison.left_is_a
            if side:
                choice = choice_from_side(left_is_a=left_is_a, side=side)
                criteria = {
                    name: choice_from_side(left_is_a=left_is_a, side=value)
                    for name, value in (criteria or {}).items()
                }
            choice_value = choice_validate(project=project, choice=choice)
            _details_validate(
                project=project,
                choice=choice_value,
                strength=strength,
                criteria=criteria or {},
                rationale=rationale,
                reason_tags=reason_tags,
                time_spent_ms=time_spent_ms,
            )
            kind = JudgmentKind.RECHECK if is_recheck else JudgmentKind.VOTE
            counts = kind == JudgmentKind.VOTE
            if counts and judged_already:
                raise JudgmentRejected("You have already judged this comparison.")
            if counts and not comparison.is_gold:
                if (
                    comparison.status != ComparisonStatus.OPEN
                    or comparison.judgment_count >= project.overlap
                ):
                    raise JudgmentRejected(
                        "This comparison already has all the judgments it needs."
                    )
                if not holding and comparison.judgment_count + live_others >= project.overlap:
                    # The remaining slots are leased to others: their work goes first.
                    raise JudgmentRejected(
                        "Your hold on this pair expired and it went to another annotator."
                    )
            elif comparison.status == ComparisonStatus.RETIRED:
                raise JudgmentRejected("This comparison has been retired.")
            judgment = Judgment(
                comparison=comparison,
                project=project,
                annotator=annotator,
                kind=kind,
                choice=choice_value,
                left_was_a=left_is_a,
                strength=strength if choice_value in (Choice.A, Choice.B) else None,
                criteria=dict(criteria or {}),
                rationale=rationale.strip(),
                reason_tags=list(dict.fromkeys(reason_tags)),
                time_spent_ms=time_spent_ms,
                guideline_id=guideline_id,
                idempotency_key=idempotency_key or None,
                superseded_at=None,
                created_at=now,
                updated_at=now,
            )
            # The writes in one round trip on PostgreSQL (see sql.batch), the INSERT last for
            # the id it returns.
            writes = [
                (
                    f"UPDATE {sql.LEASE} SET state = 'submitted', updated_at = %s"
                    " WHERE comparison_id = %s AND annotator_id = %s",
                    [at, comparison_id, annotator.pk],
                ),
                _judgment_insert_statement(judgment),
            ]
            if counts:
                inserted = votes_changed(comparison=comparison, delta=1, writes=writes)
            else:
                inserted = sql.batch(writes)
            assert inserted is not None
            judgment.pk = inserted[0]
            judgment._state.adding = False
            judgment._state.db = "default"
    except IntegrityError:
        # A concurrent twin of this submit won the race (same key or same annotator).
        if idempotency_key:
            existing = Judgment.objects.filter(idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing
        raise JudgmentRejected("You have already judged this comparison.") from None
    return judgment


# What judgment_submit reads of the comparison it locks.
_LOCKED_FIELDS = (
    "id",
    "project_id",
    "status",
    "judgment_count",
    "gold_choice",
    "left_is_a",
    "response_a_id",
    "response_b_id",
)


def _judgment_insert_statement(judgment: Judgment) -> tuple[str, list[Any]]:
    """The INSERT of a judgment built in memory (every field set), returning its id."""
    return (
        f"INSERT INTO {sql.JUDGMENT} (comparison_id, project_id, annotator_id, kind, choice,"
        " left_was_a, strength, criteria, rationale, reason_tags, time_spent_ms, guideline_id,"
        " idempotency_key, superseded_at, created_at, updated_at) VALUES (%s, %s, %s, %s, %s,"
        " %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s) RETURNING id",
        [
            judgment.comparison_id,
            judgment.project_id,
            judgment.annotator_id,
            judgment.kind,
            judgment.choice,
            judgment.left_was_a,
            judgment.strength,
            json.dumps(judgment.criteria),
            judgment.rationale,
            json.dumps(judgment.reason_tags),
            judgment.time_spent_ms,
            judgment.guideline_id,
            judgment.idempotency_key,
            sql.timestamp(judgment.created_at),
            sql.timestamp(judgment.updated_at),
        ],
    )


def live_adjudications(comparison: Comparison) -> QuerySet[Judgment]:
    return comparison.judgments.filter(kind=JudgmentKind.ADJUDICATION, superseded_at__isnull=True)


def votes_changed(
    *, comparison: Comparison, delta: int, writes: Sequence[tuple[str, Sequence[Any]]] = ()
) -> tuple[Any, ...] | None:
    """Keep the vote count, the status and the aggregated pair of a locked comparison true.

    The caller holds the comparison's row lock, so its in-memory count is the database's.
    `writes` go in the same round trip as the count's UPDATE, after it (before the pair is
    aggregated); the first row the last of them returns is returned.
    """
    comparison.judgment_count += delta
    was_complete = comparison.status == ComparisonStatus.COMPLETE
    complete = False
    if not comparison.is_gold:
        # A new vote is only taken while the comparison is open, hence not adjudicated.
        adjudicated = delta <= 0 and live_adjudications(comparison).exists()
        complete = adjudicated or comparison.judgment_count >= comparison.project.overlap
        if comparison.status != ComparisonStatus.RETIRED:
            comparison.status = ComparisonStatus.COMPLETE if complete else ComparisonStatus.OPEN
    # One statement for both (the judging hot path runs this for every vote).
    returned = sql.batch(
        [
            (
                f"UPDATE {sql.COMPARISON} SET judgment_count = %s, status = %s WHERE id = %s",
                [comparison.judgment_count, comparison.status, comparison.pk],
            ),
            *writes,
        ]
    )
    if comparison.is_gold:
        return returned
    if complete:
        pair_aggregate(comparison=comparison)
    elif was_complete or delta <= 0:
        PreferencePair.objects.filter(comparison=comparison).delete()
    return returned


def choice_validate(*, project: Project, choice: str) -> Choice:
    if choice not in Choice.values:
        raise JudgmentRejected(f"Unknown choice {choice!r}; expected one of {Choice.values}.")
    if choice == Choice.TIE and not project.allow_tie:
        raise JudgmentRejected("This project does not allow ties.")
    if choice == Choice.BOTH_BAD and not project.allow_both_bad:
        raise JudgmentRejected("This project does not allow 'both bad'.")
    return Choice(choice)


def _details_validate(
    *,
    project: Project,
    choice: Choice,
    strength: int | None,
    criteria: Mapping[str, str],
    rationale: str,
    reason_tags: Sequence[str],
    time_spent_ms: int | None,
) -> None:
    if time_spent_ms is not None and not 0 <= time_spent_ms <= MAX_TIME_SPENT_MS:
        raise JudgmentRejected("Time spent must be between 0 and 24 hours (in milliseconds).")
    if strength is not None and strength not in STRENGTHS:
        raise JudgmentRejected("Strength must be 1 (slightly), 2 (clearly) or 3 (much better).")
    if project.use_strength and strength is None and choice in (Choice.A, Choice.B):
        raise JudgmentRejected("Say how much better: slightly (7), clearly (8) or much better (9).")
    unknown = set(criteria) - set(project.criteria)
    if unknown:
        raise JudgmentRejected(f"Unknown criteria: {', '.join(sorted(unknown))}.")
    allowed = {Choice.A, Choice.B, Choice.TIE}
    bad = {name for name, value in criteria.items() if value not in allowed}
    if bad:
        raise JudgmentRejected(f"Criteria with an unknown choice: {', '.join(sorted(bad))}.")
    unknown_tags = set(reason_tags) - set(project.reason_tags)
    if unknown_tags:
        raise JudgmentRejected(f"Unknown reason tags: {', '.join(sorted(unknown_tags))}.")
    if project.rationale == RationaleMode.REQUIRED and not rationale.strip():
        raise JudgmentRejected("This project requires a rationale with each judgment.")
    if len(rationale) > MAX_RATIONALE_CHARS:
        raise JudgmentRejected(f"A rationale is at most {MAX_RATIONALE_CHARS} characters.")


def judgment_undoable(*, project: Project, annotator: User) -> Judgment | None:
    """The annotator's last judgment in the project, if it may still be undone or edited."""
    last = (
        Judgment.objects.filter(
            comparison__project=project,
            annotator=annotator,
            kind__in=[JudgmentKind.VOTE, JudgmentKind.RECHECK],
        )
        .select_related("comparison")
        .order_by("-id")
        .first()
    )
    if last is None or last.superseded_at is not None:
        return None
    if last.created_at < timezone.now() - timedelta(seconds=project.undo_seconds):
        return None
    return last


def judgment_undo(*, project: Project, annotator: User, judgment_id: int) -> Judgment:
    """Take back the last judgment: it stays on record as superseded, and the pair is held
    for the annotator again with the sides they saw, to judge afresh."""
    with transaction.atomic():
        sql.index_plans()  # the ORM's statements come first
        last = judgment_undoable(project=project, annotator=annotator)
        if last is None or last.pk != judgment_id:
            raise JudgmentRejected(
                "Only your last judgment can be undone, and only within "
                f"{project.undo_seconds // 60} minutes."
            )
        comparison = Comparison.objects.select_for_update().get(pk=last.comparison_id)
        if live_adjudications(comparison).exists():
            raise JudgmentRejected("A reviewer has already decided this comparison.")
        now = timezone.now()
        last.superseded_at = now
        last.save(update_fields=["superseded_at", "updated_at"])
        if last.kind == JudgmentKind.VOTE:
            votes_changed(comparison=comparison, delta=-1)
        lease_take(
            comparison=comparison,
            annotator=annotator,
            now=now,
            expires_at=now + timedelta(seconds=project.lease_seconds),
            left_is_a=last.left_was_a,
            is_recheck=last.kind == JudgmentKind.RECHECK,
        )
    return last
