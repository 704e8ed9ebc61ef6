from __future__ import annotations

from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotate"

    def ready(self) -> None:
        from annotate.imports.jobs import import_job_dispatch
        from annotate.models import ImportJob
        from core.jobs import job_kind_register

        job_kind_register(ImportJob, dispatch=import_job_dispatch)
