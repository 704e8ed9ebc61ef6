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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from annotate import sql
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Lease,
    LeaseState,
    Project,
    Response,
)
from annotate.services.rankings import ranking_shown
from annotate.sql import queue as sql_queue
from core.errors import ValidationFailed

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
    # A ranking's responses in the order this annotator is shown them (empty for a pair).
    shown: tuple[Response, ...] = field(default=(), compare=False)

    @classmethod
    def of(
        cls, *, comparison: Comparison, annotator_id: int, left_is_a: bool, is_recheck: bool
    ) -> Assignment:
        """The assignment as this annotator sees it: a ranking's responses in their order."""
        shown: tuple[Response, ...] = ()
        if comparison.is_ranking:
            order = ranking_shown(
                comparison=comparison, annotator_id=annotator_id, left_is_a=left_is_a
            )
            found = Response.objects.in_bulk(order)
            shown = tuple(found[response_id] for response_id in order)
        return cls(comparison=comparison, left_is_a=left_is_a, is_recheck=is_recheck, shown=shown)

    @property
    def left(self) -> Response | None:
        """A pair's left response (None for a rating)."""
        c = self.comparison
        return c.response_a if self.left_is_a or c.is_rating else c.response_b

    @property
    def right(self) -> Response | None:
        c = self.comparison
        return None if c.is_rating else c.response_b if self.left_is_a else c.response_a

    @property
    def rated(self) -> Response | None:
        """A rating's one response (None for a pair or a ranking)."""
        c = self.comparison
        return c.response_a if c.is_rating else None


def available_ids(
    *, project: Project, annotator: User, now: datetime, limit: int = CANDIDATE_WINDOW
) -> list[int]:
    """Ordinary (non-gold) comparisons this annotator may be handed now, best first: open, not
    judged or skipped by them, and with a slot that neither votes nor others' leases take."""
    return sql_queue.available_ids(
        project_id=project.pk,
        overlap=project.overlap,
        annotator_id=annotator.pk,
        now=now,
        limit=limit,
    )


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
    held = sql_queue.lease_held(project_id=project.pk, annotator_id=annotator.pk, now=now)
    if held is None:
        return None
    comparison, left_is_a, is_recheck = held
    return Assignment.of(
        comparison=comparison, annotator_id=annotator.pk, left_is_a=left_is_a, is_recheck=is_recheck
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
    sql_queue.lease_take(
        comparison_id=comparison.pk,
        project_id=comparison.project_id,
        annotator_id=annotator.pk,
        now=now,
        expires_at=expires_at,
        left_is_a=left_is_a,
        is_recheck=is_recheck,
    )
    return Assignment.of(
        comparison=comparison, annotator_id=annotator.pk, left_is_a=left_is_a, is_recheck=is_recheck
    )


# How many gold items or past votes a pick draws from.
_PICK_WINDOW = 200


def _gold_pick(*, project: Project, annotator: User, rng: random.Random) -> Comparison | None:
    ids = sql_queue.gold_ids(project_id=project.pk, annotator_id=annotator.pk, limit=_PICK_WINDOW)
    return sql_queue.comparison_get(comparison_id=rng.choice(ids)) if ids else None


def _recheck_pick(
    *, project: Project, annotator: User, rng: random.Random
) -> tuple[Comparison, bool] | None:
    """A comparison this annotator voted on, to show again, and the sides they saw it with:
    not one of their latest (project.recheck_gap_items, recheck_gap_minutes), where it would
    be recognised."""
    minutes = project.recheck_gap_minutes
    votes = sql_queue.recheck_candidates(
        project_id=project.pk,
        annotator_id=annotator.pk,
        limit=_PICK_WINDOW,
        gap_items=project.recheck_gap_items,
        gap_since=timezone.now() - timedelta(minutes=minutes) if minutes else None,
    )
    if not votes:
        return None
    comparison_id, left_was_a = rng.choice(votes)
    comparison = sql_queue.comparison_get(comparison_id=comparison_id)
    return (comparison, left_was_a) if comparison is not None else None


def _slot_free(*, comparison: Comparison, project: Project, annotator: User, now: datetime) -> bool:
    """Re-checked under the row lock, in a statement of its own (so with a snapshot taken
    after the lock): the state may have moved since the candidates were read."""
    if comparison.status != ComparisonStatus.OPEN:
        return False
    # judged: this annotator's own submit of it committed meanwhile
    judged, live = sql_queue.slot_state(
        comparison_id=comparison.pk, annotator_id=annotator.pk, now=now
    )
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
    with sql.atomic():
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
            picked = _recheck_pick(project=project, annotator=annotator, rng=rng)
            if picked is not None:
                comparison, left_was_a = picked
                return lease_take(
                    comparison=comparison,
                    annotator=annotator,
                    now=now,
                    expires_at=expires_at,
                    left_is_a=not left_was_a,
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
                        candidate = sql_queue.comparison_get(
                            comparison_id=comparison_id, lock=True, skip_locked=skip
                        )
                        if candidate is None:
                            skipped = True
                            continue
                        if not _slot_free(
                            comparison=candidate, project=project, annotator=annotator, now=now
                        ):
                            raise _NoSlot
                except _NoSlot:
                    if optimistic:
                        raise _Contended from None
                    continue
                taken = lease_take(
                    comparison=candidate,
                    annotator=annotator,
                    now=now,
                    expires_at=expires_at,
                    left_is_a=candidate.left_is_a,
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


def skip_undo(*, project: Project, annotator: User, comparison_id: int) -> Assignment:
    """Take back a skip made within the project's undo window: the pair is held for the
    annotator again, with the sides they saw (the pair held since is released)."""
    now = timezone.now()
    with transaction.atomic():
        lease = (
            Lease.objects.select_for_update()
            .select_related("comparison")
            .filter(
                comparison_id=comparison_id,
                comparison__project=project,
                annotator=annotator,
                state=LeaseState.SKIPPED,
                updated_at__gte=now - timedelta(seconds=project.undo_seconds),
            )
            .first()
        )
        if lease is None:
            raise ValidationFailed(
                "Only a skip of the last "
                f"{max(project.undo_seconds // 60, 1)} minutes can be taken back."
            )
        comparison = lease.comparison  # locked with the lease
        if lease.is_recheck or comparison.is_gold:  # they take no slot of the overlap
            wanted = comparison.status != ComparisonStatus.RETIRED
        else:
            wanted = _slot_free(
                comparison=comparison, project=project, annotator=annotator, now=now
            )
        if not wanted:
            raise ValidationFailed(
                "That pair cannot come back: others have completed it or hold its last slots."
            )
        return lease_take(
            comparison=comparison,
            annotator=annotator,
            now=now,
            expires_at=now + timedelta(seconds=project.lease_seconds),
            left_is_a=lease.left_is_a,
            is_recheck=lease.is_recheck,
        )
