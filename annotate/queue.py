"""The assignment queue: which comparison an annotator judges next, held under a lease.

A comparison is available to an annotator while it is open, they have neither judged nor
skipped it, and its votes plus the live leases of others stay below the project's overlap.
Current round first, then the comparisons nearest completion.

Two kinds of item are mixed in at the project's rates, and look like any other pair:
- gold items (a known answer): every annotator judges them, outside the overlap;
- swapped re-checks: a pair this annotator already judged, re-shown with the sides swapped,
  to measure their consistency. A re-check never counts as a vote.

Concurrency: on PostgreSQL candidate rows are locked with SKIP LOCKED so annotators never
wait on each other; on SQLite the IMMEDIATE transaction serialises the whole claim.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from annotate import sql
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
    Project,
    Prompt,
    Response,
)

# How many candidates one claim looks at; more than enough for SKIP LOCKED to find a free one.
CANDIDATE_WINDOW = 16
# Pages count the pairs available to an annotator up to this many ("50+" beyond): an exact
# count would walk every open comparison with each pair shown.
AVAILABLE_CAP = 50

SKIP_REASONS = (
    "Cannot tell which is better",
    "Outside my expertise",
    "A response is broken or empty",
    "Unsafe or upsetting content",
)


@dataclass(frozen=True)
class Assignment:
    """A comparison as this annotator is shown it: which response is on which side."""

    comparison: Comparison
    left_is_a: bool
    is_recheck: bool = False
    # How many pairs the claim found available (this one included), counted up to
    # AVAILABLE_CAP + 1; None when it did not look (a held lease, a gold item, a re-check).
    available: int | None = field(default=None, compare=False)

    @property
    def left(self) -> Response:
        c = self.comparison
        return c.response_a if self.left_is_a else c.response_b

    @property
    def right(self) -> Response:
        c = self.comparison
        return c.response_b if self.left_is_a else c.response_a


def _untouched_by(
    comparisons: QuerySet[Comparison], *, project: Project, annotator: User
) -> QuerySet[Comparison]:
    """Those of `comparisons` this annotator has neither a live vote on nor skipped."""
    judged = Judgment.objects.filter(
        annotator=annotator,
        project=project,
        kind=JudgmentKind.VOTE,
        superseded_at__isnull=True,
    ).values("comparison_id")
    skipped = Lease.objects.filter(
        annotator=annotator, comparison__project=project, state=LeaseState.SKIPPED
    ).values("comparison_id")
    return comparisons.exclude(pk__in=judged).exclude(pk__in=skipped)


# The same rules in SQL, for the claim (see annotate/sql.py for why). `c` is the comparison;
# parameters: JUDGED_BY_SQL the annotator id, LIVE_OTHERS_SQL (now, False, annotator id).
JUDGED_BY_SQL = (
    f"EXISTS (SELECT 1 FROM {sql.JUDGMENT} j WHERE j.comparison_id = c.id AND j.annotator_id = %s"
    " AND j.kind = 'vote' AND j.superseded_at IS NULL)"
)
# The leases that reserve a slot of the comparison for someone else right now (a swapped
# re-check reserves none: it is no vote).
LIVE_OTHERS_SQL = (
    f"(SELECT count(*) FROM {sql.LEASE} o WHERE o.comparison_id = c.id AND o.state = 'held'"
    " AND o.expires_at > %s AND o.is_recheck = %s AND o.annotator_id <> %s)"
)
# The columns an assignment is drawn from: the comparison, its prompt and both responses.
_PAIR_COLUMNS = (
    "c.id, c.project_id, c.prompt_id, c.response_a_id, c.response_b_id, c.left_is_a,"
    " c.round_number, c.purpose, c.gold_choice, c.status, c.judgment_count,"
    " p.messages, p.html, p.html_version, ra.text, ra.html, ra.html_version,"
    " rb.text, rb.html, rb.html_version"
)
_PAIR_JOINS = (
    f" JOIN {sql.PROMPT} p ON p.id = c.prompt_id JOIN {sql.RESPONSE} ra ON ra.id = c.response_a_id"
    f" JOIN {sql.RESPONSE} rb ON rb.id = c.response_b_id"
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
    comparison.response_b = sql.instance(
        Response,
        {"id": comparison.response_b_id, "prompt_id": prompt_id, "text": text_b}
        | {"html": html_b, "html_version": version_b},
    )
    return comparison


def available_ids(
    *, project: Project, annotator: User, now: datetime, limit: int = CANDIDATE_WINDOW
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
            # The annotator's votes and skips as two sets built once per statement (hashed),
            # not a probe per row walked: the walk passes every open pair they judged.
            f" AND c.gold_choice = '' AND c.id NOT IN (SELECT j.comparison_id FROM {sql.JUDGMENT} j"
            " WHERE j.project_id = %s AND j.annotator_id = %s AND j.kind = 'vote'"
            " AND j.superseded_at IS NULL) AND c.id NOT IN (SELECT s.comparison_id"
            f" FROM {sql.LEASE} s WHERE s.annotator_id = %s AND s.state = 'skipped')"
            f" AND c.judgment_count + {LIVE_OTHERS_SQL} < %s"
            " ORDER BY c.round_number DESC, c.judgment_count DESC, c.id LIMIT %s",
            [
                project.pk,
                project.overlap,
                project.pk,
                annotator.pk,
                annotator.pk,
                sql.timestamp(now),
                False,
                annotator.pk,
                project.overlap,
                limit,
            ],
        )
    ]


def remaining_for_annotator(*, project: Project, annotator: User) -> int:
    """How many comparisons this annotator can be handed now (the one they hold included),
    counted up to AVAILABLE_CAP + 1."""
    return len(
        available_ids(
            project=project, annotator=annotator, now=timezone.now(), limit=AVAILABLE_CAP + 1
        )
    )


def lease_held(*, project: Project, annotator: User, now: datetime) -> Assignment | None:
    """The live lease this annotator holds in the project, if its comparison still wants it:
    open, or (a gold item or a re-check) not retired."""
    row = sql.one(
        f"SELECT {_PAIR_COLUMNS}, l.left_is_a, l.is_recheck FROM {sql.LEASE} l"
        f" JOIN {sql.COMPARISON} c ON c.id = l.comparison_id{_PAIR_JOINS}"
        " WHERE l.annotator_id = %s AND l.state = 'held' AND l.expires_at > %s"
        " AND c.project_id = %s AND (c.status = 'open' OR ((l.is_recheck = %s"
        " OR c.gold_choice <> '') AND c.status <> 'retired'))"
        " ORDER BY l.updated_at DESC LIMIT 1",
        [annotator.pk, sql.timestamp(now), project.pk, True],
    )
    if row is None:
        return None
    return Assignment(
        comparison=_comparison_from_row(row[:-2]), left_is_a=bool(row[-2]), is_recheck=bool(row[-1])
    )


def lease_take(
    *,
    comparison: Comparison,
    annotator: User,
    now: datetime,
    expires_at: datetime,
    left_is_a: bool,
    is_recheck: bool = False,
) -> Assignment:
    """Hold `comparison` for this annotator in the given side layout until `expires_at`."""
    at, until = sql.timestamp(now), sql.timestamp(expires_at)
    sql.batch(
        [
            # One held lease per annotator and project: taking this one releases any other.
            (
                f"UPDATE {sql.LEASE} SET state = 'released', updated_at = %s"
                " WHERE annotator_id = %s AND state = 'held' AND comparison_id <> %s"
                f" AND comparison_id IN (SELECT id FROM {sql.COMPARISON} WHERE project_id = %s)",
                [at, annotator.pk, comparison.pk, comparison.project_id],
            ),
            (
                f"INSERT INTO {sql.LEASE} (comparison_id, annotator_id, state, expires_at,"
                " skip_reason, left_is_a, is_recheck, created_at, updated_at) VALUES (%s, %s,"
                " 'held', %s, '', %s, %s, %s, %s) ON CONFLICT (comparison_id, annotator_id) DO"
                " UPDATE SET state = 'held', expires_at = excluded.expires_at, skip_reason = '',"
                " left_is_a = excluded.left_is_a, is_recheck = excluded.is_recheck,"
                " updated_at = excluded.updated_at",
                [comparison.pk, annotator.pk, until, left_is_a, is_recheck, at, at],
            ),
        ]
    )
    return Assignment(comparison=comparison, left_is_a=left_is_a, is_recheck=is_recheck)


def _gold_pick(*, project: Project, annotator: User, rng: random.Random) -> Comparison | None:
    gold = (
        Comparison.objects.filter(project=project)
        .exclude(gold_choice="")
        .exclude(status=ComparisonStatus.RETIRED)
    )
    ids = list(
        _untouched_by(gold, project=project, annotator=annotator).values_list("id", flat=True)[:200]
    )
    return Comparison.objects.get(pk=rng.choice(ids)) if ids else None


def _recheck_pick(*, project: Project, annotator: User, rng: random.Random) -> Judgment | None:
    rechecked = Lease.objects.filter(
        annotator=annotator, comparison__project=project, is_recheck=True
    ).values("comparison_id")
    votes = list(
        Judgment.objects.filter(
            annotator=annotator,
            comparison__project=project,
            comparison__gold_choice="",
            kind=JudgmentKind.VOTE,
            superseded_at__isnull=True,
        )
        .exclude(comparison_id__in=rechecked)
        .order_by("-id")
        .values_list("id", flat=True)[:200]
    )
    return (
        Judgment.objects.select_related("comparison").get(pk=rng.choice(votes)) if votes else None
    )


def _candidate_lock(*, comparison_id: int, skip_locked: bool) -> Comparison | None:
    """The comparison row, locked (the joined prompt and responses are not)."""
    row = sql.one(
        f"SELECT {_PAIR_COLUMNS} FROM {sql.COMPARISON} c{_PAIR_JOINS} WHERE c.id = %s"
        + sql.for_update(skip_locked=skip_locked, of="c"),
        [comparison_id],
    )
    return _comparison_from_row(row) if row is not None else None


def _slot_free(*, comparison: Comparison, project: Project, annotator: User, now: datetime) -> bool:
    """Re-checked under the row lock, in a statement of its own (so with a snapshot taken
    after the lock): the state may have moved since the candidates were read."""
    if comparison.status != ComparisonStatus.OPEN:
        return False
    row = sql.one(
        f"SELECT {JUDGED_BY_SQL}, {LIVE_OTHERS_SQL} FROM {sql.COMPARISON} c WHERE c.id = %s",
        [annotator.pk, sql.timestamp(now), False, annotator.pk, comparison.pk],
    )
    assert row is not None
    judged, live = row
    # judged: this annotator's own submit of it committed meanwhile
    return not judged and comparison.judgment_count + live < project.overlap


def assignment_next(
    *,
    project: Project,
    annotator: User,
    now: datetime | None = None,
    rng: random.Random | None = None,
    holds_nothing: bool = False,
) -> Assignment | None:
    """What this annotator should judge now, leased to them; None when nothing is left.

    Calling it again while the lease lives returns the same assignment (a refresh keeps the
    pair and its sides). `holds_nothing`: the caller has just closed this annotator's lease
    (a submit or a skip), so there is no held lease to look for.
    """
    now = now or timezone.now()
    rng = rng or random.Random()
    held = None if holds_nothing else lease_held(project=project, annotator=annotator, now=now)
    if held is not None:
        return held
    try:
        return _claim(project=project, annotator=annotator, now=now, rng=rng, optimistic=True)
    except _Contended:
        return _claim(project=project, annotator=annotator, now=now, rng=rng, optimistic=False)


class _NoSlot(Exception):
    """The locked candidate has no free slot: roll its savepoint back, releasing the lock."""


class _Contended(Exception):
    """The optimistic claim met a candidate that was full or held by another claim."""


def _claim(
    *, project: Project, annotator: User, now: datetime, rng: random.Random, optimistic: bool
) -> Assignment | None:
    """Lock one candidate at a time, best first: locking the whole window at once would hide
    every row of it from concurrent claims (SKIP LOCKED) and leave them empty-handed.

    Rows another transaction holds are skipped; when every candidate was held, wait for them
    in turn (the holders' transactions are short) rather than answer "nothing". Each attempt
    runs in a savepoint that is rolled back when the pair has no free slot, which releases its
    row lock: a claim never holds one row while it waits for another, so two waiting claims
    cannot deadlock.

    `optimistic` (PostgreSQL): the usual claim locks the first candidate it tries and finds a
    slot free, so it first runs without savepoints (two statements fewer) and without waiting;
    should it meet a full or a held candidate, it gives up, its transaction is rolled back
    (releasing every lock it took) and the claim runs again the careful way.
    """
    expires_at = now + timedelta(seconds=project.lease_seconds)
    row_locks = connection.features.has_select_for_update
    skip_locked = connection.features.has_select_for_update_skip_locked
    optimistic = optimistic and skip_locked
    with transaction.atomic():
        if project.gold_rate and rng.random() < project.gold_rate:
            sql.index_plans()  # the picks are the ORM's
            gold = _gold_pick(project=project, annotator=annotator, rng=rng)
            if gold is not None:
                return lease_take(
                    comparison=gold,
                    annotator=annotator,
                    now=now,
                    expires_at=expires_at,
                    left_is_a=gold.left_is_a,
                )
        if project.swap_recheck_rate and rng.random() < project.swap_recheck_rate:
            sql.index_plans()
            vote = _recheck_pick(project=project, annotator=annotator, rng=rng)
            if vote is not None:
                return lease_take(
                    comparison=vote.comparison,
                    annotator=annotator,
                    now=now,
                    expires_at=expires_at,
                    left_is_a=not vote.left_was_a,
                    is_recheck=True,
                )
        # One walk serves both: the first candidates to claim, and the count the page shows.
        ids = available_ids(project=project, annotator=annotator, now=now, limit=AVAILABLE_CAP + 1)
        if not ids:
            return None
        passes = [True] if optimistic else [True, False] if skip_locked else [False]
        for skip in passes:
            skipped = False
            for comparison_id in ids[:CANDIDATE_WINDOW]:
                attempt = (
                    transaction.atomic()
                    if row_locks and not optimistic
                    else contextlib.nullcontext()
                )
                try:
                    with attempt:
                        comparison = _candidate_lock(comparison_id=comparison_id, skip_locked=skip)
                        if comparison is None:
                            skipped = True
                            continue
                        if not _slot_free(
                            comparison=comparison, project=project, annotator=annotator, now=now
                        ):
                            raise _NoSlot
                except _NoSlot:
                    if optimistic:
                        raise _Contended from None
                    continue
                taken = lease_take(
                    comparison=comparison,
                    annotator=annotator,
                    now=now,
                    expires_at=expires_at,
                    left_is_a=comparison.left_is_a,
                )
                return replace(taken, available=len(ids))
            if not skipped:
                break
        if optimistic and skipped:
            raise _Contended  # every candidate left was held: wait for them the careful way
    return None


def comparison_next_for_annotator(
    *,
    project: Project,
    annotator: User,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> Comparison | None:
    """The comparison of `assignment_next`, for callers that do not care about sides."""
    assignment = assignment_next(project=project, annotator=annotator, now=now, rng=rng)
    return assignment.comparison if assignment else None


def comparison_skip(*, comparison: Comparison, annotator: User, reason: str) -> Lease:
    """Record a skip; the annotator is not offered this comparison again."""
    lease, _ = Lease.objects.update_or_create(
        comparison=comparison,
        annotator=annotator,
        defaults={
            "state": LeaseState.SKIPPED,
            "skip_reason": reason.strip()[:200],
            "expires_at": timezone.now(),
        },
    )
    return lease
