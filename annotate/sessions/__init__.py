"""Sessions read with plain SQL: Django's stores, but the per-request lookup of the session row
skips the ORM (as the user's lookup does, annotate/auth.py). Every request of a logged-in
user reads its session; through the ORM that read cost about a tenth of a judgment's CPU in
the web process (bench/annotate_load.py, docs/benchmarks.md).

SESSION_ENGINE names `annotate.sessions.db` (database sessions, no shared cache) or
`annotate.sessions.cached_db` (read from the shared cache, CACHE_URL, written through).
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.models import Session
from django.utils import timezone

from annotate import sql

_SESSION = (
    f"SELECT {sql.columns(Session, 's')} FROM {Session._meta.db_table} s"
    " WHERE s.session_key = %s AND s.expire_date > %s"
)


class SqlSessionRead:
    """`_get_session_from_db` of Django's database stores, in one plain statement."""

    session_key: str | None
    _session_key: str | None

    def _get_session_from_db(self) -> Any:
        key = self.session_key
        row = sql.one(_SESSION, [key, sql.timestamp(timezone.now())]) if key else None
        if row is None:
            self._session_key = None
            return None
        return sql.instance(Session, row)
