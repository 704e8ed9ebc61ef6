"""Database sessions, read with plain SQL (annotate/sessions/__init__.py)."""

from __future__ import annotations

from django.contrib.sessions.backends import db

from annotate.sessions import SqlSessionRead


class SessionStore(SqlSessionRead, db.SessionStore):
    pass
