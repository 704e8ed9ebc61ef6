"""The health check: database, broker, a worker's canary, job lag."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery import current_app
from django.test import Client
from django.utils import timezone

from core.models import WorkerCanary
from core.tasks import worker_canary
from tests.factories import generation_job_make


def test_it_fails_until_a_worker_has_run_the_canary_then_passes(db: None) -> None:
    response = Client().get("/health/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failing"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert "no worker has run the canary" in body["checks"]["worker"]["error"]

    worker_canary("default")  # what a worker consuming the default queue does
    response = Client().get("/health/")
    assert response.status_code == 200
    assert response.json()["checks"]["worker"]["seconds_ago"] == 0


def test_a_stale_canary_fails_the_check(db: None, settings) -> None:
    worker_canary("default")
    WorkerCanary.objects.update(
        done_at=timezone.now() - timedelta(seconds=3 * settings.CANARY_SECONDS + 5)
    )
    response = Client().get("/health/")
    assert response.status_code == 503
    assert "no canary for over" in response.json()["checks"]["worker"]["error"]


def test_it_reports_how_long_the_oldest_queued_job_has_waited(project) -> None:
    worker_canary("default")
    job = generation_job_make(project)
    type(job).objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=7))
    jobs = Client().get("/health/").json()["jobs"]
    lag = jobs["alignment.generationjob"]
    assert lag["queued"] == 1 and 415 <= lag["oldest_queued_seconds"] <= 430
    assert jobs["annotate.importjob"] == {"queued": 0, "running": 0, "oldest_queued_seconds": 0}


def test_the_web_check_needs_no_worker_and_fails_without_a_broker(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Client().get("/health/web/").status_code == 200
    # No broker at that address (Celery reads CELERY_BROKER_URL from the environment first).
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(current_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    response = Client().get("/health/web/")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False
