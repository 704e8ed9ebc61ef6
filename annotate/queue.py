"""The assignment queue: which comparison an annotator judges next, held under a lease.

A comparison is available to an annotator while it is open, they have neither judged nor
skipped it, and its judgments plus the live leases of others stay below the project's
overlap. Current round first, then the comparisons nearest completion.

Concurrency: on PostgreSQL candidate rows are locked with SKIP LOCKED so annotators never
wait on each other; on SQLite the IMMEDIATE transaction serialises the whole claim.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from annotate.models import Comparison, ComparisonStatus, Judgment, Lease, LeaseState, Project

# How many candidates one claim looks at; more than enough for SKIP LOCKED to find a free one.
CANDIDATE_WINDOW = 16


def _live_lease_q(now: datetime) -> Q:
    return Q(leases__state=LeaseState.HELD, leases__expires_at__gt=now)


def comparisons_available(
    *, project: Project, annotator: User, now: datetime
) -> QuerySet[Comparison]:
    judged = Judgment.objects.filter(annotator=annotator, comparison__project=project).values(
        "comparison_id"
    )
    touched = Lease.objects.filter(
        annotator=annotator, comparison__project=project, state=LeaseState.SKIPPED
    ).values("comparison_id")
    return (
        Comparison.objects.filter(project=project, status=ComparisonStatus.OPEN)
        .exclude(pk__in=judged)
        .exclude(pk__in=touched)
        .annotate(
            live_leases=Count("leases", filter=_live_lease_q(now) & ~Q(leases__annotator=annotator))
        )
        .filter(judgment_count__lt=F("project__overlap") - F("live_leases"))
        .order_by("-round_number", "-judgment_count", "id")
    )


def lease_held(*, project: Project, annotator: User, now: datetime) -> Lease | None:
    return (
        Lease.objects.select_related("comparison")
        .filter(
            annotator=annotator,
            comparison__project=project,
            comparison__status=ComparisonStatus.OPEN,
            state=LeaseState.HELD,
            expires_at__gt=now,
        )
        .order_by("-updated_at")
        .first()
    )


def comparison_next_for_annotator(
    *, project: Project, annotator: User, now: datetime | None = None
) -> Comparison | None:
    """The comparison this annotator should judge now, leased to them; None when nothing is left.

    Calling it again while the lease lives returns the same comparison (a refresh keeps the pair).
    """
    now = now or timezone.now()
    held = lease_held(project=project, annotator=annotator, now=now)
    if held is not None:
        return held.comparison
    expires_at = now + timedelta(seconds=project.lease_seconds)
    with transaction.atomic():
        candidates = comparisons_available(project=project, annotator=annotator, now=now)
        ids = list(candidates.values_list("id", flat=True)[:CANDIDATE_WINDOW])
        if not ids:
            return None
        rows = Comparison.objects.filter(pk__in=ids).order_by(
            "-round_number", "-judgment_count", "id"
        )
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        for comparison in rows:
            # Re-check under the lock: another annotator may have taken the last slot.
            live = (
                Lease.objects.filter(
                    comparison=comparison, state=LeaseState.HELD, expires_at__gt=now
                )
                .exclude(annotator=annotator)
                .count()
            )
            if comparison.judgment_count + live >= project.overlap:
                continue
            # Release any other lease this annotator still holds in the project.
            Lease.objects.filter(
                annotator=annotator, comparison__project=project, state=LeaseState.HELD
            ).exclude(comparison=comparison).update(state=LeaseState.RELEASED, updated_at=now)
            Lease.objects.update_or_create(
                comparison=comparison,
                annotator=annotator,
                defaults={"state": LeaseState.HELD, "expires_at": expires_at, "skip_reason": ""},
            )
            return comparison
    return None


def comparison_skip(*, comparison: Comparison, annotator: User, reason: str) -> Lease:
    """Record a skip; the annotator is not offered this comparison again."""
    lease, _ = Lease.objects.update_or_create(
        comparison=comparison,
        annotator=annotator,
        defaults={
            "state": LeaseState.SKIPPED,
            "skip_reason": reason[:200],
            "expires_at": timezone.now(),
        },
    )
    return lease


def remaining_for_annotator(*, project: Project, annotator: User) -> int:
    return comparisons_available(project=project, annotator=annotator, now=timezone.now()).count()
