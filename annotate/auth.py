"""The authentication backend: Django's, with the per-request user lookup in plain SQL.

Every request loads its user from the session's user id; through the ORM that lookup was
about a sixth of a judgment's CPU in the web process (see annotate/sql.py). Passwords,
permissions and everything else are Django's ModelBackend, unchanged.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User

from annotate import sql

_USER_BY_ID = f"SELECT {sql.columns(User, 'u')} FROM {sql.USER} u WHERE u.id = %s"


class Backend(ModelBackend):
    def get_user(self, user_id: Any) -> User | None:
        try:
            row = sql.one(_USER_BY_ID, [int(user_id)])
        except (TypeError, ValueError):
            return None  # a session naming no valid id is an anonymous one
        if row is None:
            return None
        user = sql.instance(User, row)
        return user if self.user_can_authenticate(user) else None
