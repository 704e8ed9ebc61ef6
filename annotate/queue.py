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

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
    Project,
    Response,
)

# How many candidates one claim looks at; more than enough for SKIP LOCKED to find a free one.
CANDIDATE_WINDOW = 16

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

    @property
    def left(self) -> Response:
        c = self.comparison
        return c.response_a if self.left_is_a else c.response_b

    @property
    def right(self) -> Response:
        c = self.comparison
        return c.response_b if self.left_is_a else c.response_a


def live_leases_of_others(
    *, comparison: Comparison | OuterRef, annotator: User, now: datetime
) -> QuerySet[Lease]:
    """The leases that reserve a slot of this comparison for someone else right now (a swapped
    re-check reserves none: it is no vote)."""
    return Lease.objects.filter(
        comparison=comparison, state=LeaseState.HELD, expires_at__gt=now, is_recheck=False
    ).exclude(annotator=annotator)


def _untouched_by(
    comparisons: QuerySet[Comparison], *, project: Project, annotator: User
) -> QuerySet[Comparison]:
    """Those of `comparisons` this annotator has neither a live vote on nor skipped."""
    judged = Judgment.objects.filter(
        annotator=annotator,
        comparison__project=project,
        kind=JudgmentKind.VOTE,
        superseded_at__isnull=True,
    ).values("comparison_id")
    skipped = Lease.objects.filter(
        annotator=annotator, comparison__project=project, state=LeaseState.SKIPPED
    ).values("comparison_id")
    return comparisons.exclude(pk__in=judged).exclude(pk__in=skipped)


def comparisons_available(
    *, project: Project, annotator: User, now: datetime
) -> QuerySet[Comparison]:
    """Ordinary (non-gold) comparisons this annotator may be handed, best first.

    Shaped for an index walk in the queue's order that stops at the first few matches: the
    live leases of others are counted per row by a correlated subquery, not by grouping a
    join over every open comparison.
    """
    live_others = (
        live_leases_of_others(comparison=OuterRef("pk"), annotator=annotator, now=now)
        .order_by()
        .values("comparison")
        .annotate(n=Count("id"))
        .values("n")
    )
    open_ones = Comparison.objects.filter(
        project=project,
        status=ComparisonStatus.OPEN,
        gold_choice="",
        judgment_count__lt=project.overlap,
    )
    return (
        _untouched_by(open_ones, project=project, annotator=annotator)
        .annotate(live_leases=Coalesce(Subquery(live_others), 0))
        .filter(live_leases__lt=project.overlap - F("judgment_count"))
        .order_by("-round_number", "-judgment_count", "id")
    )


def lease_held(*, project: Project, annotator: User, now: datetime) -> Lease | None:
    """The live lease this annotator holds in the project, if its comparison still wants it."""
    return (
        Lease.objects.select_related("comparison__response_a", "comparison__response_b")
        .select_related("comparison__prompt")
        .filter(
            annotator=annotator,
            comparison__project=project,
            state=LeaseState.HELD,
            expires_at__gt=now,
        )
        .filter(
            Q(comparison__status=ComparisonStatus.OPEN)
            | (Q(is_recheck=True) | ~Q(comparison__gold_choice=""))
            & ~Q(comparison__status=ComparisonStatus.RETIRED)
        )
        .order_by("-updated_at")
        .first()
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
    # One held lease per annotator and project: taking this one releases any other.
    Lease.objects.filter(
        annotator=annotator, comparison__project_id=comparison.project_id, state=LeaseState.HELD
    ).exclude(comparison=comparison).update(state=LeaseState.RELEASED, updated_at=now)
    # One statement either way (INSERT ... ON CONFLICT DO UPDATE), on PostgreSQL and SQLite.
    Lease.objects.bulk_create(
        [
            Lease(
                comparison=comparison,
                annotator=annotator,
                state=LeaseState.HELD,
                expires_at=expires_at,
                skip_reason="",
                left_is_a=left_is_a,
                is_recheck=is_recheck,
                created_at=now,
                updated_at=now,
            )
        ],
        update_conflicts=True,
        unique_fields=["comparison", "annotator"],
        update_fields=[
            "state",
            "expires_at",
            "skip_reason",
            "left_is_a",
            "is_recheck",
            "updated_at",
        ],
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


class _NoSlot(Exception):
    """The locked candidate has no free slot: roll its savepoint back, releasing the lock."""


def _candidate_lock(*, comparison_id: int, skip_locked: bool) -> Comparison | None:
    rows = Comparison.objects.filter(pk=comparison_id).select_related(
        "prompt", "response_a", "response_b"
    )
    if connection.features.has_select_for_update:
        # Lock the comparison row only, not the joined prompt and responses.
        of = ("self",) if connection.features.has_select_for_update_of else ()
        rows = rows.select_for_update(skip_locked=skip_locked, of=of)
    return rows.first()


def _slot_free(*, comparison: Comparison, project: Project, annotator: User, now: datetime) -> bool:
    """Re-checked under the row lock: the state may have moved since the candidates were read."""
    if comparison.status != ComparisonStatus.OPEN:
        return False
    if Judgment.objects.filter(
        comparison=comparison,
        annotator=annotator,
        kind=JudgmentKind.VOTE,
        superseded_at__isnull=True,
    ).exists():
        return False  # this annotator's own submit of it committed meanwhile
    live = live_leases_of_others(comparison=comparison, annotator=annotator, now=now).count()
    return comparison.judgment_count + live < project.overlap


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
        return Assignment(
            comparison=held.comparison, left_is_a=held.left_is_a, is_recheck=held.is_recheck
        )
    expires_at = now + timedelta(seconds=project.lease_seconds)
    with transaction.atomic():
        if project.gold_rate and rng.random() < project.gold_rate:
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
        candidates = comparisons_available(project=project, annotator=annotator, now=now)
        ids = list(candidates.values_list("id", flat=True)[:CANDIDATE_WINDOW])
        if not ids:
            return None
        # Lock one candidate at a time, best first: locking the whole window at once would
        # hide every row of it from concurrent claims (SKIP LOCKED) and leave them empty-handed.
        # Rows another transaction holds are skipped; when every candidate was held, wait for
        # them in turn (the holders' transactions are short) rather than answer "nothing".
        # Each attempt runs in a savepoint that is rolled back when the pair has no free slot,
        # which releases its row lock: a claim never holds one row while it waits for another,
        # so two waiting claims cannot deadlock.
        row_locks = connection.features.has_select_for_update
        passes = [True, False] if connection.features.has_select_for_update_skip_locked else [False]
        for skip in passes:
            skipped = False
            for comparison_id in ids:
                try:
                    with transaction.atomic(savepoint=row_locks):
                        comparison = _candidate_lock(comparison_id=comparison_id, skip_locked=skip)
                        if comparison is None:
                            skipped = True
                            continue
                        if not _slot_free(
                            comparison=comparison, project=project, annotator=annotator, now=now
                        ):
                            raise _NoSlot
                except _NoSlot:
                    continue
                return lease_take(
                    comparison=comparison,
                    annotator=annotator,
                    now=now,
                    expires_at=expires_at,
                    left_is_a=comparison.left_is_a,
                )
            if not skipped:
                break
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


def remaining_for_annotator(*, project: Project, annotator: User) -> int:
    """Open comparisons this annotator has neither judged nor skipped (others' leases aside:
    a count to show, cheap enough for every swap)."""
    open_ones = Comparison.objects.filter(
        project=project, status=ComparisonStatus.OPEN, gold_choice=""
    )
    return _untouched_by(open_ones, project=project, annotator=annotator).count()
