"""The API's prompts: listed, and imported (with the rows refused named by line)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.access import access_project
from annotate.api.projects import MessageOut, ProjectApi
from annotate.imports.rows import KINDS
from annotate.imports.writing import import_records
from annotate.models import Prompt, Role, Split
from core.api import (
    BODY_ERRORS,
    ERRORS,
    REJECTED,
    THROTTLED,
    ExpensiveRequestThrottle,
    PageQuery,
    paged_serializer,
)


class PromptOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    messages = MessageOut(many=True)
    tags = serializers.ListField(child=serializers.CharField())
    # The API's key. The metaclass takes declared fields off the class: at run time it clashes
    # with no `Field.source`; only the stubs see one.
    source = serializers.CharField(allow_blank=True)  # type: ignore[assignment]
    external_id = serializers.CharField(allow_blank=True)
    split = serializers.ChoiceField(choices=Split.choices)
    created_at = serializers.DateTimeField()


PROMPT_PAGE = paged_serializer("PromptPage", PromptOut)


class PromptQuery(PageQuery):
    split = serializers.ChoiceField(choices=Split.choices, required=False)


class ImportIn(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(choices=KINDS, default="prompts")
    rows = serializers.ListField(
        child=serializers.JSONField(),
        min_length=1,
        max_length=10_000,
        help_text=(
            "Rows as an import file holds them. Prompts: {prompt | messages, tags?, id?, "
            "split?, source?}. Pairs: TRL conversational or standard prompt / chosen / "
            "rejected, or chosen / rejected conversations sharing their prompt turns."
        ),
    )
    valid_only = serializers.BooleanField(
        default=False, help_text="Import the valid rows and report the others."
    )
    keep_duplicates = serializers.BooleanField(
        default=False,
        help_text="Import rows already in the project (same content hash) again; by default "
        "they are skipped and their lines returned in `duplicates`.",
    )


class ImportOut(serializers.Serializer[Any]):
    kind = serializers.CharField()
    created = serializers.IntegerField()
    skipped = inline_serializer(
        "SkippedRow",
        {"line": serializers.IntegerField(), "message": serializers.CharField()},
        many=True,
    )
    duplicates = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Lines (rows, from 1) left out as already in the project or earlier in the body.",
    )


class PromptListApi(ProjectApi):
    min_role = Role.REVIEWER
    throttle_classes = [ExpensiveRequestThrottle]
    expensive_methods = ("POST",)

    @extend_schema(
        operation_id="prompts_list",
        tags=["prompts"],
        parameters=[PromptQuery],
        responses={200: PROMPT_PAGE, **ERRORS},
        summary="The project's prompts (reviewers and leads)",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        query = PromptQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        prompts = Prompt.objects.filter(project=project).order_by("id")
        if "split" in query.validated_data:
            prompts = prompts.filter(split=query.validated_data["split"])
        offset, limit = query.validated_data["offset"], query.validated_data["limit"]
        page = prompts.defer("embedding")[offset : offset + limit]
        return Response(
            PROMPT_PAGE.to_representation(
                {"count": prompts.count(), "offset": offset, "results": page}
            )
        )

    @extend_schema(
        operation_id="prompts_import",
        tags=["prompts"],
        request=ImportIn,
        responses={201: ImportOut, **BODY_ERRORS, **REJECTED, **THROTTLED},
        summary="Import prompts or existing pairs (leads); all or nothing unless valid_only",
    )
    def post(self, request: Request, slug: str) -> Response:
        project = access_project(user=request.user, slug=slug, min_role=Role.LEAD)
        body = ImportIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        result = import_records(
            project=project,
            kind=data["kind"],
            records=enumerate(data["rows"], start=1),
            valid_only=data["valid_only"],
            keep_duplicates=data["keep_duplicates"],
        )
        return Response(ImportOut(result).data, status=status.HTTP_201_CREATED)
