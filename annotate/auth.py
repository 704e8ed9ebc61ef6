"""The authentication backend: Django's, with the per-request user lookup in plain SQL.

Every request loads its user from the session's user id; through the ORM that lookup was
about a sixth of a judgment's CPU in the web process (see annotate/sql). Passwords,
permissions and everything else are Django's ModelBackend, unchanged.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User

from annotate.sql import access as sql_access


class Backend(ModelBackend):
    def get_user(self, user_id: Any) -> User | None:
        try:
            user = sql_access.user_get(user_id=int(user_id))
        except (TypeError, ValueError):
            return None  # a session naming no valid id is an anonymous one
        return user if user is not None and self.user_can_authenticate(user) else None
