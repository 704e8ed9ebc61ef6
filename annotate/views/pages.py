"""What every page of a project shares: its context (the project, the user's role, the nav)."""

from __future__ import annotations

from typing import Any

from annotate.access import project_role
from annotate.models import Project, Role
from core.http import AuthedRequest


def page_context(
    request: AuthedRequest, project: Project, role: Role | None = None, **extra: Any
) -> dict[str, Any]:
    """The context of every project page, on both sides: the project and the user's role."""
    role = role or project_role(user=request.user, project=project)
    return {"project": project, "role": role.value if role else None, **extra}


def int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None
