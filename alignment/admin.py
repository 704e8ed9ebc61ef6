from __future__ import annotations

from django.contrib import admin

from alignment import models


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin[models.ModelVersion]):
    list_display = ["name", "project", "parent", "base_model", "adapter_path", "created_at"]
    list_filter = ["project"]


@admin.register(models.Round)
class RoundAdmin(admin.ModelAdmin[models.Round]):
    list_display = ["project", "number", "policy", "samples_per_prompt", "pairing_strategy"]
    filter_horizontal = ["prompts"]


@admin.register(models.GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin[models.GenerationJob]):
    list_display = ["id", "round", "model_version", "status", "progress_done", "progress_total"]
    list_filter = ["status"]
    filter_horizontal = ["prompts"]


@admin.register(models.TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin[models.TrainingRun]):
    list_display = ["id", "project", "base_version", "status", "progress_done", "progress_total"]
    list_filter = ["status"]


@admin.register(models.Judge)
class JudgeAdmin(admin.ModelAdmin[models.Judge]):
    list_display = ["name", "project", "kind", "mode", "rule", "model_name", "created_at"]
    list_filter = ["project", "kind", "mode"]


@admin.register(models.JudgeJob)
class JudgeJobAdmin(admin.ModelAdmin[models.JudgeJob]):
    list_display = ["id", "judge", "mode", "status", "progress_done", "progress_total"]
    list_filter = ["status", "mode"]
