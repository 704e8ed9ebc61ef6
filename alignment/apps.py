from __future__ import annotations

from django.apps import AppConfig


class AlignmentConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "alignment"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from alignment.models import GenerationJob, JudgeJob, TrainingRun
        from alignment.services.judges import judge_job_dispatch
        from alignment.services.model_versions import base_version_on_project_created
        from alignment.services.pairs import ladder_step
        from alignment.services.rounds import generation_dispatch
        from alignment.services.training import training_run_dispatch
        from annotate.models import Project
        from annotate.signals import pair_decided
        from core.jobs import job_kind_register

        job_kind_register(GenerationJob, dispatch=generation_dispatch, queue="gpu")
        job_kind_register(TrainingRun, dispatch=training_run_dispatch, queue="gpu")
        # Rules and endpoints need no GPU; the local judge is a small model on CPU.
        job_kind_register(JudgeJob, dispatch=judge_job_dispatch)
        # annotate creates projects and knows nothing of model versions (alignment depends on
        # it, never the reverse): the base version, the root of the lineage, comes with them.
        post_save.connect(
            base_version_on_project_created, sender=Project, dispatch_uid="base-version"
        )
        # A winner-stays round forms its next pair when a judgment decides the last one.
        pair_decided.connect(ladder_step, dispatch_uid="winner-stays-ladder")
