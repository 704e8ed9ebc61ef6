"""Sessions read from the shared cache, and from the database with plain SQL on a miss."""

from __future__ import annotations

from django.contrib.sessions.backends import cached_db

from annotate.sessions import SqlSessionRead


class SessionStore(SqlSessionRead, cached_db.SessionStore):
    pass
