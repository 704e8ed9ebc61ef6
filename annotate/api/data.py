"""The API's data out: the export of pairs, its dataset card, and the coverage statistics."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.api.projects import ProjectApi
from annotate.coverage import coverage_is_stale
from annotate.exports import FORMATS, SPLITS, ExportFilters, export_download
from annotate.models import CoverageStats, Role
from core.api import ERRORS, THROTTLED, ExpensiveRequestThrottle
from core.http import MAX_ID, numbers_parse


class ExportQuery(serializers.Serializer[Any]):
    format = serializers.ChoiceField(choices=list(FORMATS), default="dpo")
    split = serializers.ChoiceField(choices=list(SPLITS), default="train")
    rounds = serializers.CharField(
        required=False,
        max_length=2000,
        help_text=f"Comma-separated round numbers (0 to {MAX_ID}); none: every round.",
    )
    min_agreement = serializers.FloatField(default=0.0, min_value=0.0, max_value=1.0)
    tags = serializers.CharField(
        required=False, max_length=2000, help_text="Comma-separated: prompts with any of them."
    )
    include_ties = serializers.BooleanField(default=True)
    criteria = serializers.CharField(
        required=False,
        max_length=2000,
        help_text="Comma-separated: only pairs whose winner also won these criteria.",
    )

    def validate_rounds(self, value: str) -> tuple[int, ...]:
        try:
            return tuple(dict.fromkeys(numbers_parse(value, name="rounds")))
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from None


def _export_query(request: Request) -> tuple[str, ExportFilters]:
    query = ExportQuery(data=request.query_params)
    query.is_valid(raise_exception=True)
    data = query.validated_data
    filters = ExportFilters(
        rounds=data.get("rounds", ()),
        min_agreement=data["min_agreement"],
        split=data["split"],
        tags=tuple(t.strip() for t in data.get("tags", "").split(",") if t.strip()),
        include_ties=data["include_ties"],
        criteria=tuple(c.strip() for c in data.get("criteria", "").split(",") if c.strip()),
    )
    return data["format"], filters


class ExportApi(ProjectApi):
    min_role = Role.LEAD
    throttle_classes = [ExpensiveRequestThrottle]
    expensive_methods = ("GET",)

    @extend_schema(
        operation_id="export_download",
        tags=["export"],
        parameters=[ExportQuery],
        responses={
            (200, "application/jsonl"): OpenApiResponse(
                OpenApiTypes.STR, description="One TRL row per line, streamed."
            ),
            **ERRORS,
            **THROTTLED,
        },
        summary="The preference pairs as TRL JSONL (leads)",
    )
    def get(self, request: Request, slug: str) -> HttpResponseBase:
        project = self.project(request, slug)
        format, filters = _export_query(request)
        return export_download(project=project, format=format, filters=filters, part="data")


class ExportCardApi(ProjectApi):
    min_role = Role.LEAD

    @extend_schema(
        operation_id="export_card",
        tags=["export"],
        parameters=[ExportQuery],
        responses={
            (200, "text/markdown"): OpenApiResponse(
                OpenApiTypes.STR, description="The dataset card (README.md) of that export."
            ),
            **ERRORS,
        },
        summary="The dataset card of an export (leads)",
    )
    def get(self, request: Request, slug: str) -> HttpResponseBase:
        project = self.project(request, slug)
        format, filters = _export_query(request)
        return export_download(
            project=project, format=format, filters=filters, part="card", attachment=False
        )


class CoverageQuery(serializers.Serializer[Any]):
    scope = serializers.RegexField(
        r"^(project|round:\d{1,9}|snapshot:\d{1,9})$",
        default="project",
        help_text="project, round:N or snapshot:ID",
    )


class CoverageOut(serializers.Serializer[Any]):
    # Of a CoverageStats, with context["stale"].
    scope = serializers.CharField()
    computed_at = serializers.DateTimeField()
    stale = serializers.SerializerMethodField(help_text="The prompts or pairs changed since.")
    # The API's key. The metaclass takes declared fields off the class: `Serializer.data`
    # still works; only the stubs see a clash.
    data = serializers.JSONField(  # type: ignore[assignment]
        help_text="The statistics the coverage page draws."
    )

    def get_stale(self, stats: CoverageStats) -> bool:
        return bool(self.context["stale"])


class CoverageApi(ProjectApi):
    min_role = Role.REVIEWER

    @extend_schema(
        operation_id="coverage_retrieve",
        tags=["statistics"],
        parameters=[CoverageQuery],
        responses={200: CoverageOut, **ERRORS},
        summary="Prompt-diversity and coverage statistics, as last computed by a worker",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        query = CoverageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        scope = query.validated_data["scope"]
        stats = project.coverage.filter(scope=scope).first()
        if stats is None:
            raise Http404("No statistics for this scope yet.")
        stale = coverage_is_stale(project=project)
        return Response(CoverageOut(stats, context={"stale": stale}).data)
