"""The API's comparisons: listed, and one with its judgments and its pair."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from annotate import selectors
from annotate.access import access_comparison
from annotate.api.projects import MessageOut, ProjectApi
from annotate.models import (
    Choice,
    Comparison,
    ComparisonKind,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    Role,
)
from annotate.services.model_judgments import model_member
from core.api import ERRORS, PageQuery, paged_serializer
from core.http import MAX_ID


class ResponseOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    text = serializers.CharField(allow_blank=True)
    policy = serializers.CharField(source="policy.name")


class ComparisonOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    prompt_id = serializers.IntegerField()
    round_number = serializers.IntegerField()
    purpose = serializers.CharField()
    pairing_strategy = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=ComparisonStatus.choices)
    judgment_count = serializers.IntegerField()
    gold_choice = serializers.CharField(allow_blank=True)
    responses = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="A ranking's response ids (empty for a pair).",
    )
    ranking_id = serializers.IntegerField(
        allow_null=True, help_text="A pair a ranking implies: that ranking's id."
    )
    kind = serializers.ChoiceField(
        choices=ComparisonKind.choices, help_text="A pair, a ranking or a rating."
    )
    created_at = serializers.DateTimeField()


COMPARISON_PAGE = paged_serializer("ComparisonPage", ComparisonOut)


class ComparisonQuery(PageQuery):
    status = serializers.ChoiceField(choices=ComparisonStatus.choices, required=False)
    round = serializers.IntegerField(required=False, min_value=0, max_value=MAX_ID)


class ComparisonListApi(ProjectApi):
    min_role = Role.REVIEWER

    @extend_schema(
        operation_id="comparisons_list",
        tags=["comparisons"],
        parameters=[ComparisonQuery],
        responses={200: COMPARISON_PAGE, **ERRORS},
        summary="The project's comparisons (reviewers and leads)",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        query = ComparisonQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        comparisons = Comparison.objects.filter(project=project).order_by("id")
        if "status" in data:
            comparisons = comparisons.filter(status=data["status"])
        if "round" in data:
            comparisons = comparisons.filter(round_number=data["round"])
        page = comparisons[data["offset"] : data["offset"] + data["limit"]]
        return Response(
            COMPARISON_PAGE.to_representation(
                {"count": comparisons.count(), "offset": data["offset"], "results": page}
            )
        )


class JudgmentOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    comparison_id = serializers.IntegerField()
    annotator = serializers.CharField(source="annotator.username")
    kind = serializers.ChoiceField(choices=JudgmentKind.choices)
    choice = serializers.ChoiceField(choices=Choice.choices, help_text="In terms of A and B.")
    side = serializers.SerializerMethodField(help_text="As the annotator saw it.")
    strength = serializers.IntegerField(allow_null=True)
    criteria = serializers.DictField(child=serializers.CharField())
    rationale = serializers.CharField(allow_blank=True)
    reason_tags = serializers.ListField(child=serializers.CharField())
    score = serializers.IntegerField(
        allow_null=True, help_text="A rating's score on the project's 1-5 scale."
    )
    time_spent_ms = serializers.IntegerField(allow_null=True)
    guideline_version = serializers.IntegerField(source="guideline.version", allow_null=True)
    shown = serializers.ListField(
        child=serializers.IntegerField(), help_text="A ranking's response ids in the order shown."
    )
    ranks = serializers.ListField(
        child=serializers.IntegerField(), help_text="A ranking's ranks, in the order shown."
    )
    source_id = serializers.IntegerField(
        allow_null=True, help_text="An implied judgment: the ranking judgment it comes from."
    )
    superseded = serializers.SerializerMethodField()
    by_model = serializers.SerializerMethodField(
        help_text="Made by a model judge (a member of kind model), not a person."
    )
    created_at = serializers.DateTimeField()

    def get_side(self, judgment: Judgment) -> str:
        if judgment.choice not in (Choice.A, Choice.B):
            return str(judgment.choice)
        return "left" if (judgment.choice == Choice.A) == judgment.left_was_a else "right"

    def get_superseded(self, judgment: Judgment) -> bool:
        return judgment.superseded_at is not None

    def get_by_model(self, judgment: Judgment) -> bool:
        known = getattr(judgment, "by_model", None)  # Judgment.objects.with_by_model()
        if known is None:
            known = model_member(project_id=judgment.project_id, user_id=judgment.annotator_id)
        return bool(known)


@extend_schema_serializer(component_name="PairSummary")
class PairSummaryOut(serializers.Serializer[Any]):
    kind = serializers.CharField()
    chosen_id = serializers.IntegerField(help_text="The chosen response.")
    rejected_id = serializers.IntegerField()
    agreement = serializers.FloatField()
    n_judgments = serializers.IntegerField()


class ComparisonDetailOut(ComparisonOut):
    # Of the comparison, with context["review"]: its selectors.comparison_review.
    prompt = MessageOut(many=True, source="prompt.messages")
    response_a = ResponseOut()
    response_b = ResponseOut(allow_null=True, help_text="None for a rating.")
    judgments = serializers.SerializerMethodField()
    pair = serializers.SerializerMethodField()

    @extend_schema_field(JudgmentOut(many=True))
    def get_judgments(self, comparison: Comparison) -> Any:
        return JudgmentOut(self.context["review"].judgments, many=True).data

    @extend_schema_field(PairSummaryOut(allow_null=True))
    def get_pair(self, comparison: Comparison) -> Any:
        pair = self.context["review"].pair
        return PairSummaryOut(pair).data if pair is not None else None


class ComparisonDetailApi(ProjectApi):
    min_role = Role.REVIEWER

    @extend_schema(
        operation_id="comparisons_retrieve",
        tags=["comparisons"],
        responses={200: ComparisonDetailOut, **ERRORS},
        summary="A comparison with its responses, judgments and aggregated pair",
    )
    def get(self, request: Request, slug: str, comparison_id: int) -> Response:
        project = self.project(request, slug)
        comparison = access_comparison(
            user=request.user, project=project, comparison_id=comparison_id
        )
        review = selectors.comparison_review(comparison=comparison)
        return Response(ComparisonDetailOut(comparison, context={"review": review}).data)
