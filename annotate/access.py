"""One gate per object kind. Outside a user's projects everything is a 404, never a 403."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404

from annotate.models import Comparison, Membership, Project, Role
from annotate.sql import access as sql_access

AnyUser = User | AnonymousUser

# What each role may do; a higher role includes the lower ones.
ROLE_RANK = {Role.ANNOTATOR: 1, Role.REVIEWER: 2, Role.LEAD: 3}


def projects_for_user(*, user: AnyUser) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()


def project_role(*, user: AnyUser, project: Project) -> Role | None:
    """The user's role in the project; site admins act as leads everywhere."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return Role.LEAD
    cached = getattr(project, "_access_role", None)
    if cached is not None and cached[0] == user.pk:
        role: Role = cached[1]
        return role
    membership = Membership.objects.filter(user=user, project=project).only("role").first()
    return Role(membership.role) if membership else None


def access_project(*, user: AnyUser, slug: str, min_role: Role = Role.ANNOTATOR) -> Project:
    """The project, if the user holds at least `min_role` in it; 404 otherwise."""
    if not user.is_authenticated:
        raise Http404("No such project.")
    if user.is_superuser:
        project = Project.objects.filter(slug=slug).first()
        role: Role | None = Role.LEAD
    else:
        # The project and the user's role in it, in one statement of plain SQL: every page
        # and every judgment passes here (see annotate/sql).
        found = sql_access.project_and_role(user_id=user.pk, slug=slug)
        project, role = (found[0], Role(found[1])) if found is not None else (None, None)
    if project is None or role is None or ROLE_RANK[role] < ROLE_RANK[min_role]:
        raise Http404("No such project.")
    project._access_role = (user.pk, role)  # type: ignore[attr-defined]
    return project


def access_comparison(*, user: AnyUser, project: Project, comparison_id: int) -> Comparison:
    """A comparison of a project the caller already passed `access_project` for."""
    comparison = (
        Comparison.objects.select_related("prompt", "response_a", "response_b", "project")
        .filter(project=project, pk=comparison_id)
        .first()
    )
    if comparison is None:
        raise Http404("No such comparison.")
    return comparison


def role_at_least(role: Role | None, minimum: Role) -> bool:
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[minimum]


def roles_with_at_least(minimum: Role) -> Iterable[Role]:
    return [role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK[minimum]]
