from __future__ import annotations

from django.apps import AppConfig


class AlignmentConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "alignment"

    def ready(self) -> None:
        from alignment.models import GenerationJob, TrainingRun
        from alignment.services.rounds import generation_dispatch
        from alignment.services.training import training_run_dispatch
        from core.jobs import job_kind_register

        job_kind_register(GenerationJob, dispatch=generation_dispatch)
        job_kind_register(TrainingRun, dispatch=training_run_dispatch)
