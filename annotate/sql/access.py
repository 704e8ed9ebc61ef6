"""The per-request lookups: every page and every judgment passes here."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from annotate import sql
from annotate.models import Project

_USER_BY_ID = f"SELECT {sql.columns(User, 'u')} FROM {sql.USER} u WHERE u.id = %s"
_PROJECT_AND_ROLE = (
    f"SELECT {sql.columns(Project, 'p')}, m.role FROM {sql.PROJECT} p"
    f" JOIN {sql.MEMBERSHIP} m ON m.project_id = p.id AND m.user_id = %s WHERE p.slug = %s"
)


def user_get(*, user_id: int) -> User | None:
    row = sql.one(_USER_BY_ID, [user_id])
    return sql.instance(User, row) if row is not None else None


def project_and_role(*, user_id: int, slug: str) -> tuple[Project, Any] | None:
    """The project with this slug and the user's role in it; None when not a member."""
    row = sql.one(_PROJECT_AND_ROLE, [user_id, slug])
    if row is None:
        return None
    return sql.instance(Project, row[:-1]), row[-1]


def annotator_counts(
    *, project_id: int, annotator_id: int
) -> tuple[int, int | None, int | None, int | None]:
    """(live votes, current guideline version, quota, guideline version seen) of an annotator
    in a project; it runs with every pair an annotator is shown."""
    row = sql.one(
        f"SELECT (SELECT count(*) FROM {sql.JUDGMENT} j WHERE j.project_id = %s"
        " AND j.annotator_id = %s AND j.kind = 'vote' AND j.superseded_at IS NULL),"
        f" (SELECT max(g.version) FROM {sql.GUIDELINE} g WHERE g.project_id = %s),"
        f" m.quota, m.guideline_seen_version FROM {sql.USER} u LEFT JOIN {sql.MEMBERSHIP} m"
        " ON m.project_id = %s AND m.user_id = u.id WHERE u.id = %s",
        [project_id, annotator_id, project_id, project_id, annotator_id],
    )
    assert row is not None
    return int(row[0]), row[1], row[2], row[3]
