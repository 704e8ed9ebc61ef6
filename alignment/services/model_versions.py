"""Model versions: the base model as the root of a project's lineage, and each trained adapter."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from alignment.models import ModelVersion
from annotate.models import Project
from annotate.services.prompts import policy_create


def model_version_base_ensure(*, project: Project) -> ModelVersion:
    """The project's base model as a version (the root of its lineage), created once."""
    version = project.model_versions.filter(parent=None, adapter_path="").order_by("id").first()
    if version is not None:
        return version
    with transaction.atomic():
        policy = policy_create(project=project, name="v0 (base)", description=project.base_model)
        return ModelVersion.objects.create(
            project=project, policy=policy, name=policy.name, base_model=project.base_model
        )


def base_version_on_project_created(
    sender: type[Project], instance: Project, created: bool, **kwargs: Any
) -> None:
    """A new project gets its base version in the transaction that creates it."""
    if created and not kwargs.get("raw"):
        model_version_base_ensure(project=instance)


def model_version_register(
    *, project: Project, parent: ModelVersion, adapter_path: str, adapter_sha256: str
) -> ModelVersion:
    with transaction.atomic():
        number = project.model_versions.count()
        name = f"v{number}"
        policy = policy_create(
            project=project, name=name, description=f"LoRA adapter on {parent.name}"
        )
        return ModelVersion.objects.create(
            project=project,
            policy=policy,
            name=name,
            parent=parent,
            base_model=parent.base_model,
            adapter_path=adapter_path,
            adapter_sha256=adapter_sha256,
        )
