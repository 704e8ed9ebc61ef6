"""Reads of model versions: the project's list and its lineage tree."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import QuerySet

from alignment.models import ModelVersion, TrainingRun
from annotate.models import (
    Project,
)


def model_versions_for_project(*, project: Project) -> QuerySet[ModelVersion]:
    """The project's versions, newest first."""
    return ModelVersion.objects.filter(project=project).select_related("parent").order_by("-id")


def model_version_newest(*, project: Project) -> ModelVersion | None:
    return model_versions_for_project(project=project).first()


@dataclass
class ModelVersionNode:
    version: ModelVersion
    lineage: list[ModelVersion]  # this version first, then its ancestors up to the root
    produced_by: TrainingRun | None
    depth: int = 0
    children: list[ModelVersionNode] = field(default_factory=list)

    @property
    def lineage_label(self) -> str:
        return " ← ".join(version.name for version in self.lineage)


@dataclass
class ModelVersionTree:
    roots: list[ModelVersionNode]
    nodes: list[ModelVersionNode]  # every version, depth first from the roots, parents first


def model_version_tree(*, project: Project) -> ModelVersionTree:
    """Every version of the project with its lineage, its training run and its children."""
    versions = list(
        ModelVersion.objects.filter(project=project).select_related("produced_by").order_by("id")
    )
    by_id = {version.pk: version for version in versions}
    nodes = {
        version.pk: ModelVersionNode(
            version=version,
            lineage=version.lineage(by_id),
            produced_by=getattr(version, "produced_by", None),
        )
        for version in versions
    }
    roots: list[ModelVersionNode] = []
    for version in versions:
        node = nodes[version.pk]
        parent = nodes.get(version.parent_id) if version.parent_id else None
        if parent is None:
            roots.append(node)
        else:
            parent.children.append(node)
    ordered: list[ModelVersionNode] = []
    stack = [(root, 0) for root in reversed(roots)]
    while stack:
        node, depth = stack.pop()
        node.depth = depth
        ordered.append(node)
        stack.extend((child, depth + 1) for child in reversed(node.children))
    return ModelVersionTree(roots=roots, nodes=ordered)
