from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django.forms import ModelForm
from django.http import HttpRequest

from annotate import models

logger = logging.getLogger(__name__)

# What decides which code a worker runs: a base model's files, and whether its own Python may
# run. Only a superuser sets them; each change is logged (and in the admin's history).
MODEL_CODE_FIELDS = ("base_model", "trust_remote_code")


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin[models.Project]):
    list_display = ["name", "slug", "base_model", "overlap", "created_at"]
    prepopulated_fields = {"slug": ["name"]}

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else fields + MODEL_CODE_FIELDS

    def save_model(
        self, request: HttpRequest, obj: models.Project, form: ModelForm[Any], change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        for field in MODEL_CODE_FIELDS:
            if field in form.changed_data:
                logger.warning(
                    "Project %s: %s set to %r by %s in the admin",
                    obj.slug,
                    field,
                    getattr(obj, field),
                    request.user.get_username(),
                )


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin[models.Membership]):
    list_display = ["user", "project", "role", "quota"]
    list_filter = ["project", "role"]


@admin.register(models.Guideline)
class GuidelineAdmin(admin.ModelAdmin[models.Guideline]):
    list_display = ["project", "version", "created_at"]
    list_filter = ["project"]


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin[models.Prompt]):
    list_display = ["id", "project", "split", "source", "__str__"]
    list_filter = ["project", "split"]
    search_fields = ["external_id", "content_hash"]


@admin.register(models.Policy)
class PolicyAdmin(admin.ModelAdmin[models.Policy]):
    list_display = ["name", "project", "kind"]


@admin.register(models.Response)
class ResponseAdmin(admin.ModelAdmin[models.Response]):
    list_display = ["id", "prompt", "policy", "completion_tokens", "finish_reason"]
    list_filter = ["policy"]
    raw_id_fields = ["prompt"]


@admin.register(models.Comparison)
class ComparisonAdmin(admin.ModelAdmin[models.Comparison]):
    list_display = ["id", "project", "round_number", "purpose", "status", "judgment_count"]
    list_filter = ["project", "status", "purpose", "round_number"]
    raw_id_fields = ["prompt", "response_a", "response_b"]


@admin.register(models.Lease)
class LeaseAdmin(admin.ModelAdmin[models.Lease]):
    list_display = ["comparison", "annotator", "state", "expires_at"]
    list_filter = ["state"]
    raw_id_fields = ["comparison"]


@admin.register(models.Judgment)
class JudgmentAdmin(admin.ModelAdmin[models.Judgment]):
    list_display = ["id", "comparison", "annotator", "choice", "left_was_a", "created_at"]
    list_filter = ["choice"]
    raw_id_fields = ["comparison"]


@admin.register(models.PreferencePair)
class PreferencePairAdmin(admin.ModelAdmin[models.PreferencePair]):
    list_display = ["id", "project", "kind", "agreement", "n_judgments"]
    list_filter = ["project", "kind"]
    raw_id_fields = ["comparison", "chosen", "rejected"]


@admin.register(models.DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin[models.DatasetSnapshot]):
    list_display = ["id", "project", "n_pairs", "content_hash", "created_at"]
