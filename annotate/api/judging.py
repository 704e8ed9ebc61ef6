"""The API's judging: the next assignment, a judgment, a skip, undo, the annotator's own\njudgments, and the guidelines they acknowledge."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from annotate import selectors
from annotate.access import access_comparison, project_role
from annotate.api.comparisons import JudgmentOut
from annotate.api.projects import MessageOut, ProjectApi
from annotate.models import (
    SCORE_MAX,
    SCORE_MIN,
    ComparisonKind,
    Judgment,
    JudgmentKind,
    Project,
    Role,
)
from annotate.queue import SKIP_REASONS, assignment_next, comparison_skip
from annotate.ranking import K_MAX, K_MIN
from annotate.rendering import rendered_html
from annotate.services.judgments import (
    MAX_TIME_SPENT_MS,
    STRENGTHS,
    ComparisonMissing,
    judgment_submit,
    judgment_undo,
)
from annotate.services.projects import guideline_acknowledge, guideline_current
from core.api import BODY_ERRORS, ERRORS, REJECTED, PageQuery, paged_serializer
from core.http import MAX_ID


class RenderedHtmlField(serializers.CharField):
    """A response's text as the sanitised HTML the page shows (source="*": the response)."""

    def to_representation(self, value: Any) -> str:
        return rendered_html(value)


class SideOut(serializers.Serializer[Any]):
    text = serializers.CharField(allow_blank=True)
    html = RenderedHtmlField(
        source="*", help_text="The text as sanitised HTML, as the page shows it."
    )


class ShownOut(SideOut):
    id = serializers.IntegerField()


class AssignmentOut(serializers.Serializer[Any]):
    # Of an annotate.queue.Assignment. (Comments, not docstrings: the schema shows those.)
    comparison_id = serializers.IntegerField(source="comparison.pk")
    kind = serializers.ChoiceField(
        choices=ComparisonKind.choices,
        help_text="A pair: choose a side. A ranking: give ranks to `responses`. A rating: "
        "rate `response` good or bad (or give a score, on a 1-5 scale).",
    )
    prompt = MessageOut(many=True, source="comparison.prompt.messages")
    left = SideOut(allow_null=True, help_text="A pair's left response (null for a ranking).")
    right = SideOut(allow_null=True)
    responses = ShownOut(
        many=True,
        source="shown",
        help_text="A ranking's responses in the order you are shown them (empty for a pair): "
        "submit `ranks` in this order.",
    )
    response = SideOut(allow_null=True, help_text="A rating's one response (null otherwise).")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        kind = instance.comparison.kind
        pair = kind == ComparisonKind.PAIR
        return {
            "comparison_id": instance.comparison.pk,
            "kind": str(kind),
            "prompt": MessageOut(instance.comparison.prompt.messages, many=True).data,
            "left": SideOut(instance.left).data if pair else None,
            "right": SideOut(instance.right).data if pair else None,
            "responses": ShownOut(instance.shown, many=True).data,
            "response": SideOut(instance.rated).data if kind == ComparisonKind.RATING else None,
        }


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
    choices = serializers.ListField(
        child=serializers.CharField(), help_text="A pair's (a rating's: good, bad)."
    )
    rating_scale = serializers.CharField(
        source="project.rating_scale", help_text="good_bad, or five: a score from 1 to 5."
    )
    rating_threshold = serializers.IntegerField(
        source="project.rating_threshold", help_text="On the 1-5 scale, good from this up."
    )
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
        summary="The pair (or ranking) to judge next, held for you under a lease",
        description=(
            "Asking again while the lease lives returns the same pair with the same sides (a "
            "ranking: the same order). Judge it with POST comparisons/{id}/judgments/ or skip it."
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
            "project": project,
            "choices": _choices(project),
            "strengths": {str(k): v for k, v in STRENGTHS.items()},
            "skip_reasons": list(SKIP_REASONS),
        }
        return Response(AssignmentPageOut(page).data)


class JudgmentIn(serializers.Serializer[Any]):
    choice = serializers.ChoiceField(
        choices=["left", "right", "tie", "both_bad", "good", "bad"],
        required=False,
        help_text="A pair: the side, as you were shown it. A ranking: both_bad for all bad. "
        "A rating on the good / bad scale: good or bad.",
    )
    ranks = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=K_MAX),
        required=False,
        min_length=K_MIN,
        max_length=K_MAX,
        help_text="A ranking: one rank per response, in the order shown (1 the best; equal "
        "ranks are a tie). Give either this or choice.",
    )
    score = serializers.IntegerField(
        required=False,
        min_value=SCORE_MIN,
        max_value=SCORE_MAX,
        help_text="A rating on the 1-5 scale: the score (good from the project's threshold up). "
        "Give either this or choice.",
    )
    strength = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=3)
    criteria = serializers.DictField(
        child=serializers.ChoiceField(
            choices=["left", "right", "tie", "good", "bad", *(str(k) for k in range(1, K_MAX + 1))]
        ),
        required=False,
        help_text="criterion name → side, for the project's criteria (a ranking: the shown "
        "position, 1 to K, of the best response on it, or tie; a rating: good or bad).",
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

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("choice", "ranks", "score") if name in attrs]
        if len(given) != 1:
            raise serializers.ValidationError(
                {
                    "choice": "Give one of a choice (a pair; a ranking: both_bad; a rating: good "
                    f"or bad), ranks (a ranking) or a score (a rating), not {' and '.join(given)}."
                }
                if given
                else {"choice": "This field is required (or ranks, or a score)."}
            )
        return attrs


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
                side=data.get("choice", ""),
                ranks=data.get("ranks"),
                score=data.get("score"),
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
        judgments = (
            Judgment.objects.filter(project=project)
            .with_by_model()
            .select_related("annotator", "guideline")
        )
        user = request.user
        assert isinstance(user, User)
        role = project_role(user=user, project=project)
        if role == Role.ANNOTATOR:
            judgments = judgments.filter(annotator=user).exclude(
                kind__in=[JudgmentKind.ADJUDICATION, JudgmentKind.IMPLIED]
            )
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
        responses={200: AcknowledgedOut, **BODY_ERRORS, **REJECTED},
        summary="Say you have read the guidelines up to a version",
        description="Up to the current version at most: a later one is refused (422).",
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
