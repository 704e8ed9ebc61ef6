from __future__ import annotations

import os

import pytest
from django.conf import settings


def services_available() -> str | None:
    """Why the real services cannot be used here, or None when they can."""
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return "DATABASE_URL does not point at PostgreSQL"
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        return "CELERY_BROKER_URL does not point at Redis"
    return None


@pytest.fixture
def real_services() -> None:
    reason = services_available()
    if reason is None:
        return
    if os.environ.get("PREFLOOP_REQUIRE_SERVICES") == "1":
        pytest.fail(f"PREFLOOP_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)
