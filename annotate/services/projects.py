"""Projects, their members and settings, and their guidelines (versioned)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from annotate.models import (
    SCORE_MAX,
    SCORE_MIN,
    Guideline,
    Membership,
    Project,
    RatingScale,
    Role,
)
from annotate.rendering import newlines_normalised
from core.errors import ValidationFailed

PROJECT_SETTINGS = (
    "name",
    "description",
    "overlap",
    "allow_tie",
    "allow_both_bad",
    "use_strength",
    "criteria",
    "reason_tags",
    "rationale",
    "gold_rate",
    "swap_recheck_rate",
    "recheck_gap_items",
    "recheck_gap_minutes",
    "lease_seconds",
    "undo_seconds",
    "rating_scale",
    "rating_threshold",
    "judge_kappa_min",
)

# The most judgments a member's quota may allow (the member form's bound too).
MAX_QUOTA = 1_000_000


def project_create(
    *,
    name: str,
    slug: str,
    guidelines: str,
    created_by: User | None = None,
    **settings: Any,
) -> Project:
    with transaction.atomic():
        project = Project.objects.create(name=name, slug=slug, **settings)
        guideline_publish(
            project=project, body=guidelines, changes="First version.", created_by=created_by
        )
        if created_by is not None:
            membership_set(project=project, user=created_by, role=Role.LEAD)
    return project


def project_settings_update(*, project: Project, **changes: Any) -> Project:
    """Change annotation settings; judgments already made keep what they were made under."""
    unknown = set(changes) - set(PROJECT_SETTINGS)
    if unknown:
        raise ValidationFailed(f"Unknown project settings: {', '.join(sorted(unknown))}.")
    if "overlap" in changes and changes["overlap"] < 1:
        raise ValidationFailed("Overlap must be at least 1.")
    for name in ("gold_rate", "swap_recheck_rate"):
        if name in changes and not 0 <= changes[name] <= 1:
            raise ValidationFailed(f"{name} must be between 0 and 1.")
    if "rating_scale" in changes and changes["rating_scale"] not in RatingScale.values:
        raise ValidationFailed(f"rating_scale must be one of {', '.join(RatingScale.values)}.")
    if "rating_threshold" in changes and not SCORE_MIN <= changes["rating_threshold"] <= SCORE_MAX:
        raise ValidationFailed(
            f"rating_threshold is a score from {SCORE_MIN} to {SCORE_MAX}: good from it up."
        )
    if "judge_kappa_min" in changes and not -1 <= changes["judge_kappa_min"] <= 1:
        raise ValidationFailed("judge_kappa_min must be between -1 and 1 (a kappa).")
    for name, value in changes.items():
        setattr(project, name, value)
    project.save(update_fields=list(changes))
    return project


def membership_set(
    *, project: Project, user: User, role: Role | str, quota: int | None = None
) -> Membership:
    if role not in Role.values:
        raise ValidationFailed(f"Unknown role {role!r}; expected one of {Role.values}.")
    if quota is not None and not 1 <= quota <= MAX_QUOTA:
        raise ValidationFailed(f"quota must be between 1 and {MAX_QUOTA}, or none.")
    membership, _ = Membership.objects.update_or_create(
        project=project, user=user, defaults={"role": role, "quota": quota}
    )
    return membership


def membership_remove(*, project: Project, user: User) -> None:
    Membership.objects.filter(project=project, user=user).delete()


def guideline_current(*, project: Project) -> Guideline | None:
    return project.guidelines.order_by("-version").first()


def guideline_publish(
    *, project: Project, body: str, changes: str = "", created_by: User | None = None
) -> Guideline:
    if not body.strip():
        raise ValidationFailed("Guidelines cannot be empty.")
    # A browser's textarea sends CRLF: stored as plain newlines, the text renders and diffs
    # as it was typed.
    body, changes = newlines_normalised(body), newlines_normalised(changes)
    with transaction.atomic():
        current = guideline_current(project=project)
        version = (current.version if current else 0) + 1
        return Guideline.objects.create(
            project=project, version=version, body=body, changes=changes, created_by=created_by
        )


def guideline_acknowledge(*, project: Project, user: User, version: int) -> None:
    """Record that ``user`` has read the guidelines up to ``version``: one of the project's,
    never a version not yet published (ValidationFailed)."""
    current = guideline_current(project=project)
    if current is None:
        raise ValidationFailed("This project has no guidelines yet.")
    if not 1 <= version <= current.version:
        raise ValidationFailed(
            f"There is no guideline version {version}: the current one is {current.version}."
        )
    Membership.objects.filter(project=project, user=user).update(guideline_seen_version=version)
