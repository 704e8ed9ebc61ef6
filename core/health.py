"""The health check: what an uptime monitor and the compose file's health check ask.

GET /health/ answers 200 when the database answers, the broker takes a connection and a
worker ran the canary task lately (Celery beat sends one to the default queue every
CANARY_SECONDS), else 503; the body says which check failed and, for each kind of job, how
many wait and how long the oldest has waited. GET /health/web/ checks only what the web
process itself needs (the database and the broker): the web container's own health check.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection
from django.db.models import Count, Min
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core import jobs
from core.models import JobStatus, WorkerCanary

CANARY_QUEUE = "default"


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:  # any failure to answer is the finding
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True, "vendor": connection.vendor}


def _broker() -> dict[str, Any]:
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            transport = conn.transport_cls
    except Exception as error:
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True, "transport": str(transport)}


def _worker() -> dict[str, Any]:
    try:
        canary = WorkerCanary.objects.filter(queue=CANARY_QUEUE).first()
    except Exception as error:
        return {"ok": False, "error": type(error).__name__}
    if canary is None:
        return {"ok": False, "error": f"no worker has run the canary from '{CANARY_QUEUE}' yet"}
    age = (timezone.now() - canary.done_at).total_seconds()
    stale = 3 * settings.CANARY_SECONDS
    return {
        "ok": age <= stale,
        "queue": CANARY_QUEUE,
        "seconds_ago": round(age),
        "worker": canary.worker,
        **({} if age <= stale else {"error": f"no canary for over {stale:.0f} s"}),
    }


def _job_lag() -> dict[str, Any]:
    """Per kind of job: how many are queued and running, and how long the oldest queued one has
    waited. Reported, never failed on: a GPU job may rightly wait behind a long training run."""
    lag: dict[str, Any] = {}
    now = timezone.now()
    for model in jobs.job_kinds():
        try:
            counts = dict(
                model._default_manager.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
                .values_list("status")
                .annotate(n=Count("pk"))
            )
            oldest = model._default_manager.filter(status=JobStatus.QUEUED).aggregate(
                t=Min("created_at")
            )
        except Exception as error:
            return {"error": type(error).__name__}
        waited = (now - oldest["t"]).total_seconds() if oldest["t"] else 0.0
        lag[model._meta.label_lower] = {
            "queued": counts.get(JobStatus.QUEUED, 0),
            "running": counts.get(JobStatus.RUNNING, 0),
            "oldest_queued_seconds": round(waited),
        }
    return lag


def health_report(*, with_worker: bool) -> dict[str, Any]:
    checks = {"database": _database(), "broker": _broker()}
    if with_worker:
        checks["worker"] = _worker()
    report: dict[str, Any] = {
        "status": "ok" if all(c["ok"] for c in checks.values()) else "failing",
        "checks": checks,
    }
    if with_worker and checks["database"]["ok"]:
        report["jobs"] = _job_lag()
    return report


def _answer(report: dict[str, Any]) -> JsonResponse:
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return _answer(health_report(with_worker=True))


@never_cache
@require_GET
def health_web(request: HttpRequest) -> JsonResponse:
    return _answer(health_report(with_worker=False))
