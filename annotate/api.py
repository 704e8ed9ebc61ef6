"""The JSON API of the human side (DRF); alignment/api.py adds the machine side.

Token or session authentication. Every view gates through annotate.access, as the pages do:
outside a user's projects everything is a 404, and a role too low for a view is a 404 as
well. Each view parses its input with its own serializer and calls one service or selector.
Errors share one JSON shape, and paging one query (core/api.py).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import Http404, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotate import selectors
from annotate.access import access_comparison, access_project, project_role, projects_for_user
from annotate.coverage import coverage_is_stale
from annotate.exports import FORMATS, SPLITS, ExportFilters, export_download
from annotate.imports import KINDS, import_records
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    CoverageStats,
    Judgment,
    JudgmentKind,
    Project,
    Prompt,
    Role,
    Split,
)
from annotate.queue import SKIP_REASONS, assignment_next, comparison_skip
from annotate.rendering import rendered_html
from annotate.services.judgments import (
    MAX_TIME_SPENT_MS,
    STRENGTHS,
    ComparisonMissing,
    judgment_submit,
    judgment_undo,
)
from annotate.services.projects import guideline_acknowledge, guideline_current
from core.api import (
    BODY_ERRORS,
    ERRORS,
    MAX_ID,
    REJECTED,
    ErrorSerializer,
    PageQuery,
    paged_serializer,
)


class ProjectApi(APIView):
    # A view of one project; `min_role` is the lowest role that may use it. (A comment, not a
    # docstring: the schema would give it to every subclass as its description.)
    min_role = Role.ANNOTATOR

    def project(self, request: Request, slug: str) -> Project:
        return access_project(user=request.user, slug=slug, min_role=self.min_role)


# Projects -----------------------------------------------------------------------------------


class ProjectOut(serializers.Serializer[Any]):
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    role = serializers.SerializerMethodField(help_text="Yours in this project.")
    base_model = serializers.CharField()
    overlap = serializers.IntegerField()
    allow_tie = serializers.BooleanField()
    allow_both_bad = serializers.BooleanField()
    use_strength = serializers.BooleanField()
    criteria = serializers.ListField(child=serializers.CharField())
    reason_tags = serializers.ListField(child=serializers.CharField())
    rationale = serializers.CharField()
    undo_seconds = serializers.IntegerField()
    lease_seconds = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices))
    def get_role(self, project: Project) -> str:
        # context["roles"]: project id → the caller's role; site admins act as leads.
        return str(self.context["roles"].get(project.pk) or Role.LEAD)


class ProjectListApi(APIView):
    @extend_schema(
        operation_id="projects_list",
        tags=["projects"],
        responses={200: ProjectOut(many=True), 401: ERRORS[401]},
        summary="Your projects",
    )
    def get(self, request: Request) -> Response:
        user = request.user
        projects = list(projects_for_user(user=user).order_by("slug"))
        roles = dict(user.memberships.values_list("project_id", "role"))  # type: ignore[union-attr]
        return Response(ProjectOut(projects, many=True, context={"roles": roles}).data)


class ProjectDetailApi(ProjectApi):
    @extend_schema(
        operation_id="projects_retrieve",
        tags=["projects"],
        responses={200: ProjectOut, **ERRORS},
        summary="A project and its annotation settings",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        roles = {project.pk: project_role(user=request.user, project=project)}
        return Response(ProjectOut(project, context={"roles": roles}).data)


# Prompts -----------------------------------------------------------------------------------


class MessageOut(serializers.Serializer[Any]):
    role = serializers.CharField()
    content = serializers.CharField(allow_blank=True)


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


class ImportOut(serializers.Serializer[Any]):
    kind = serializers.CharField()
    created = serializers.IntegerField()
    skipped = inline_serializer(
        "SkippedRow",
        {"line": serializers.IntegerField(), "message": serializers.CharField()},
        many=True,
    )


class PromptListApi(ProjectApi):
    min_role = Role.REVIEWER

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
        responses={201: ImportOut, **BODY_ERRORS, **REJECTED},
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
        )
        return Response(ImportOut(result).data, status=status.HTTP_201_CREATED)


# Comparisons (reviewers and leads) ---------------------------------------------------------


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
    time_spent_ms = serializers.IntegerField(allow_null=True)
    guideline_version = serializers.IntegerField(source="guideline.version", allow_null=True)
    superseded = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_side(self, judgment: Judgment) -> str:
        if judgment.choice in (Choice.TIE, Choice.BOTH_BAD):
            return str(judgment.choice)
        return "left" if (judgment.choice == Choice.A) == judgment.left_was_a else "right"

    def get_superseded(self, judgment: Judgment) -> bool:
        return judgment.superseded_at is not None


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
    response_b = ResponseOut()
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


# The annotation flow ------------------------------------------------------------------------


class RenderedHtmlField(serializers.CharField):
    """A response's text as the sanitised HTML the page shows (source="*": the response)."""

    def to_representation(self, value: Any) -> str:
        return rendered_html(value)


class SideOut(serializers.Serializer[Any]):
    text = serializers.CharField(allow_blank=True)
    html = RenderedHtmlField(
        source="*", help_text="The text as sanitised HTML, as the page shows it."
    )


class AssignmentOut(serializers.Serializer[Any]):
    # Of an annotate.queue.Assignment. (Comments, not docstrings: the schema shows those.)
    comparison_id = serializers.IntegerField(source="comparison.pk")
    prompt = MessageOut(many=True, source="comparison.prompt.messages")
    left = SideOut()
    right = SideOut()


class ProgressOut(serializers.Serializer[Any]):
    judged = serializers.IntegerField()
    remaining = serializers.IntegerField(help_text="Counted up to 51; see remaining_label.")
    remaining_label = serializers.CharField()
    quota = serializers.IntegerField(allow_null=True)


class AssignmentPageOut(serializers.Serializer[Any]):
    assignment = AssignmentOut(allow_null=True, help_text="null: nothing left to judge now.")
    progress = ProgressOut()
    guideline_version = serializers.IntegerField(
        allow_null=True, source="progress.guideline_version"
    )
    guideline_seen_version = serializers.IntegerField(
        allow_null=True,
        source="progress.guideline_seen_version",
        help_text="Below guideline_version: read and acknowledge them.",
    )
    choices = serializers.ListField(child=serializers.CharField())
    strengths = serializers.DictField(child=serializers.CharField())
    skip_reasons = serializers.ListField(child=serializers.CharField())


def _choices(project: Project) -> list[str]:
    return [
        side
        for side, allowed in (
            ("left", True),
            ("right", True),
            ("tie", project.allow_tie),
            ("both_bad", project.allow_both_bad),
        )
        if allowed
    ]


class AssignmentApi(ProjectApi):
    @extend_schema(
        operation_id="assignment_next",
        tags=["annotation"],
        responses={200: AssignmentPageOut, **ERRORS},
        summary="The pair to judge next, held for you under a lease",
        description=(
            "Asking again while the lease lives returns the same pair with the same sides. "
            "Judge it with POST comparisons/{id}/judgments/ or skip it."
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        user = request.user
        assert isinstance(user, User)
        assignment = assignment_next(project=project, annotator=user)
        progress = selectors.annotator_progress(
            project=project,
            annotator=user,
            remaining=assignment.available if assignment is not None else None,
        )
        page = {
            "assignment": assignment,
            "progress": progress,
            "choices": _choices(project),
            "strengths": {str(k): v for k, v in STRENGTHS.items()},
            "skip_reasons": list(SKIP_REASONS),
        }
        return Response(AssignmentPageOut(page).data)


class JudgmentIn(serializers.Serializer[Any]):
    choice = serializers.ChoiceField(
        choices=["left", "right", "tie", "both_bad"], help_text="The side, as you were shown it."
    )
    strength = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=3)
    criteria = serializers.DictField(
        child=serializers.ChoiceField(choices=["left", "right", "tie"]),
        required=False,
        help_text="criterion name → side, for the project's criteria.",
    )
    rationale = serializers.CharField(required=False, allow_blank=True, max_length=4000)
    reason_tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=20
    )
    idempotency_key = serializers.CharField(
        required=False,
        min_length=8,
        max_length=64,
        help_text="A retried request with the same key returns the first judgment.",
    )
    time_spent_ms = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_TIME_SPENT_MS
    )


class JudgmentCreateApi(ProjectApi):
    @extend_schema(
        operation_id="judgments_create",
        tags=["annotation"],
        request=JudgmentIn,
        responses={201: JudgmentOut, **BODY_ERRORS, **REJECTED},
        summary="Judge a comparison",
    )
    def post(self, request: Request, slug: str, comparison_id: int) -> Response:
        project = self.project(request, slug)
        body = JudgmentIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        user = request.user
        assert isinstance(user, User)
        try:
            judgment = judgment_submit(
                comparison_id=comparison_id,
                annotator=user,
                project=project,
                side=data["choice"],
                idempotency_key=data.get("idempotency_key"),
                strength=data.get("strength"),
                criteria=data.get("criteria") or {},
                rationale=data.get("rationale", ""),
                reason_tags=data.get("reason_tags", []),
                time_spent_ms=data.get("time_spent_ms"),
            )
        except ComparisonMissing:
            raise Http404("No such comparison.") from None
        judgment = Judgment.objects.select_related("annotator", "guideline").get(pk=judgment.pk)
        return Response(JudgmentOut(judgment).data, status=status.HTTP_201_CREATED)


class SkipIn(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=200, help_text="Why; see skip_reasons.")


@extend_schema_serializer(component_name="Skipped")
class SkippedOut(serializers.Serializer[Any]):
    # Of the skip's Lease.
    comparison_id = serializers.IntegerField()
    reason = serializers.CharField(source="skip_reason")


class SkipApi(ProjectApi):
    @extend_schema(
        operation_id="comparisons_skip",
        tags=["annotation"],
        request=SkipIn,
        responses={200: SkippedOut, **BODY_ERRORS},
        summary="Skip a comparison (you are not offered it again)",
    )
    def post(self, request: Request, slug: str, comparison_id: int) -> Response:
        project = self.project(request, slug)
        comparison = access_comparison(
            user=request.user, project=project, comparison_id=comparison_id
        )
        body = SkipIn(data=request.data)
        body.is_valid(raise_exception=True)
        user = request.user
        assert isinstance(user, User)
        lease = comparison_skip(
            comparison=comparison, annotator=user, reason=body.validated_data["reason"]
        )
        return Response(SkippedOut(lease).data)


JUDGMENT_PAGE = paged_serializer("JudgmentPage", JudgmentOut)


class JudgmentQuery(PageQuery):
    annotator = serializers.CharField(
        required=False, max_length=150, help_text="Reviewers and leads: one annotator's."
    )


class JudgmentListApi(ProjectApi):
    @extend_schema(
        operation_id="judgments_list",
        tags=["annotation"],
        parameters=[JudgmentQuery],
        responses={200: JUDGMENT_PAGE, **ERRORS},
        summary="Judgments, newest first: annotators see their own only",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        query = JudgmentQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        judgments = Judgment.objects.filter(project=project).select_related(
            "annotator", "guideline"
        )
        user = request.user
        assert isinstance(user, User)
        role = project_role(user=user, project=project)
        if role == Role.ANNOTATOR:
            judgments = judgments.filter(annotator=user).exclude(kind=JudgmentKind.ADJUDICATION)
        elif "annotator" in data:
            judgments = judgments.filter(annotator__username=data["annotator"])
        judgments = judgments.order_by("-id")
        page = judgments[data["offset"] : data["offset"] + data["limit"]]
        return Response(
            JUDGMENT_PAGE.to_representation(
                {"count": judgments.count(), "offset": data["offset"], "results": page}
            )
        )


class JudgmentUndoApi(ProjectApi):
    @extend_schema(
        operation_id="judgments_undo",
        tags=["annotation"],
        request=None,
        responses={200: JudgmentOut, **ERRORS, **REJECTED},
        summary="Take back your last judgment (within the project's undo window)",
        description="The pair is held for you again, with the sides you saw.",
    )
    def post(self, request: Request, slug: str, judgment_id: int) -> Response:
        project = self.project(request, slug)
        user = request.user
        assert isinstance(user, User)
        undone = judgment_undo(project=project, annotator=user, judgment_id=judgment_id)
        undone = Judgment.objects.select_related("annotator", "guideline").get(pk=undone.pk)
        return Response(JudgmentOut(undone).data)


class GuidelineOut(serializers.Serializer[Any]):
    version = serializers.IntegerField()
    body = serializers.CharField(help_text="Markdown.")
    changes = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()


class AcknowledgeIn(serializers.Serializer[Any]):
    version = serializers.IntegerField(min_value=1, max_value=MAX_ID)


@extend_schema_serializer(component_name="Acknowledged")
class AcknowledgedOut(serializers.Serializer[Any]):
    guideline_seen_version = serializers.IntegerField()


class GuidelineApi(ProjectApi):
    @extend_schema(
        operation_id="guidelines_current",
        tags=["annotation"],
        responses={200: GuidelineOut, **ERRORS},
        summary="The current guidelines",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        guideline = guideline_current(project=project)
        if guideline is None:
            raise Http404("This project has no guidelines yet.")
        return Response(GuidelineOut(guideline).data)

    @extend_schema(
        operation_id="guidelines_acknowledge",
        tags=["annotation"],
        request=AcknowledgeIn,
        responses={200: AcknowledgedOut, **BODY_ERRORS},
        summary="Say you have read the guidelines up to a version",
    )
    def post(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        body = AcknowledgeIn(data=request.data)
        body.is_valid(raise_exception=True)
        user = request.user
        assert isinstance(user, User)
        guideline_acknowledge(project=project, user=user, version=body.validated_data["version"])
        progress = selectors.annotator_progress(project=project, annotator=user, remaining=0)
        seen = progress.guideline_seen_version or 0
        return Response(AcknowledgedOut({"guideline_seen_version": seen}).data)


# Export and statistics ----------------------------------------------------------------------


class ExportQuery(serializers.Serializer[Any]):
    format = serializers.ChoiceField(choices=list(FORMATS), default="dpo")
    split = serializers.ChoiceField(choices=list(SPLITS), default="train")
    rounds = serializers.RegexField(
        r"^\s*\d{1,9}\s*(,\s*\d{1,9}\s*)*$",
        required=False,
        help_text="Comma-separated round numbers; none: every round.",
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


def _export_query(request: Request) -> tuple[str, ExportFilters]:
    query = ExportQuery(data=request.query_params)
    query.is_valid(raise_exception=True)
    data = query.validated_data
    filters = ExportFilters(
        rounds=tuple(int(n) for n in data.get("rounds", "").split(",") if n.strip()),
        min_agreement=data["min_agreement"],
        split=data["split"],
        tags=tuple(t.strip() for t in data.get("tags", "").split(",") if t.strip()),
        include_ties=data["include_ties"],
        criteria=tuple(c.strip() for c in data.get("criteria", "").split(",") if c.strip()),
    )
    return data["format"], filters


class ExportApi(ProjectApi):
    min_role = Role.LEAD

    @extend_schema(
        operation_id="export_download",
        tags=["export"],
        parameters=[ExportQuery],
        responses={
            (200, "application/jsonl"): OpenApiResponse(
                OpenApiTypes.STR, description="One TRL row per line, streamed."
            ),
            **ERRORS,
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


# Tokens ---------------------------------------------------------------------------------------


class TokenApi(ObtainAuthToken):
    @extend_schema(
        operation_id="auth_token",
        tags=["auth"],
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer("TokenOut", {"token": serializers.CharField()}),
            400: OpenApiResponse(ErrorSerializer, description="Wrong username or password."),
            415: BODY_ERRORS[415],
        },
        summary="Your API token, for your username and password",
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)
