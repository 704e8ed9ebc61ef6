"""The database away (a restart, a failover): 503 with Retry-After, never a 500 and a traceback.
(The real restart is bench/fault_drills.py postgres-restart.)"""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import Client

from annotate.models import Project
from annotate.views import projects as project_pages


def _away(*args: object, **kwargs: object) -> None:
    raise OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
        "the database system is shutting down"
    )


def test_the_api_and_the_pages_answer_503_while_the_database_is_away(
    project: Project, lead: User, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client()
    client.force_login(lead)
    monkeypatch.setattr("annotate.api.projects.access_project", _away)
    monkeypatch.setattr(project_pages, "access_project", _away)
    with caplog.at_level(logging.WARNING):
        api = client.get(f"/api/v1/projects/{project.slug}/")
        page = client.get(f"/p/{project.slug}/settings/")
    assert api.status_code == 503 and api.json()["error"]["code"] == "unavailable"
    assert page.status_code == 503 and "try again" in page.content.decode()
    assert api["Retry-After"] == page["Retry-After"] == "5"
    # Django logs each 5xx answer's line; no traceback, as for a fault of the code.
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


def test_a_failing_statement_is_still_a_server_error(
    project: Project, lead: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OperationalError("no such column: annotate_project.nonexistent")

    client = Client(raise_request_exception=False)
    client.force_login(lead)
    monkeypatch.setattr("annotate.api.projects.access_project", broken)
    assert client.get(f"/api/v1/projects/{project.slug}/").status_code == 500
