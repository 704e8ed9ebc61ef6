"""Celery tasks of the human side: ids in, a service does the work."""

from __future__ import annotations

from celery import shared_task

from annotate import coverage
from annotate.imports import jobs as import_jobs
from annotate.models import Project


@shared_task(name="annotate.tasks.coverage_refresh")
def coverage_refresh(project_id: int) -> None:
    project = Project.objects.filter(pk=project_id).first()
    # A twin request may have refreshed it already: running twice is only wasted work.
    if project is not None and coverage.coverage_is_stale(project=project):
        coverage.coverage_refresh(project=project)


@shared_task(name="annotate.tasks.import_job_run")
def import_job_run(job_id: int) -> None:
    import_jobs.import_job_execute(job_id=job_id)
