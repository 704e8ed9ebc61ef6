"""The JSON API of the machine side: rounds, training runs, model versions (leads only, as
the pages). Errors, authentication and access as in annotate/api.py."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from alignment.engine.spec import SAMPLING_FIELDS, TRAINING_FIELDS, TRAINING_PRESETS
from alignment.models import (
    DataScope,
    ModelVersion,
    PairingStrategy,
    PairSelection,
    Reference,
    StartFrom,
)
from alignment.models import TrainingRun as TrainingRunModel
from alignment.selectors.leaderboard import leaderboard_get
from alignment.selectors.rounds import RoundRow, round_detail_get, round_list_for_project
from alignment.selectors.runs import (
    access_training_run,
    training_run_get,
    training_run_list_for_project,
    training_run_points,
)
from alignment.selectors.versions import model_versions_for_project
from alignment.services.rounds import (
    MAX_GUIDANCE_CHARS,
    PROMPT_CHOICES,
    ROUND_SIZE_FIELDS,
    SamplingSettings,
    round_next_start,
)
from alignment.services.training import TrainingPlan, training_run_cancel, training_run_start
from alignment.services.training_settings import TrainingSettings
from alignment.spec_fields import serializer_fields
from annotate.api.projects import ProjectApi
from annotate.models import DatasetSnapshot, Project, Role
from annotate.services.snapshots import SnapshotFilters
from core.api import BODY_ERRORS, ERRORS, REJECTED, THROTTLED, ExpensiveRequestThrottle
from core.http import MAX_ID
from core.models import JobStatus


def _version(project_versions: QuerySet[ModelVersion], version_id: int, what: str) -> ModelVersion:
    version = project_versions.filter(pk=version_id).first()
    if version is None:
        raise serializers.ValidationError({what: ["No such model version in this project."]})
    return version


# Model versions ------------------------------------------------------------------------------


class ModelVersionOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()
    parent_id = serializers.IntegerField(allow_null=True)
    base_model = serializers.CharField()
    adapter_path = serializers.CharField(allow_blank=True)
    adapter_sha256 = serializers.CharField(allow_blank=True)
    is_base = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class ModelVersionListApi(ProjectApi):
    min_role = Role.LEAD

    @extend_schema(
        operation_id="model_versions_list",
        tags=["models"],
        responses={200: ModelVersionOut(many=True), **ERRORS},
        summary="The project's model versions, newest first (leads)",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        versions = model_versions_for_project(project=project)
        return Response(ModelVersionOut(versions, many=True).data)


# Rounds -------------------------------------------------------------------------------------


class GenerationJobOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    model_version_id = serializers.IntegerField()
    purpose = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    progress_done = serializers.IntegerField()
    progress_total = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class RoundOut(serializers.Serializer[Any]):
    # Of a RoundRow: the round and its counts.
    number = serializers.IntegerField(source="round.number")
    policy_id = serializers.IntegerField(
        source="round.policy_id", help_text="The model version that generates it."
    )
    samples_per_prompt = serializers.IntegerField(source="round.samples_per_prompt")
    pairing_strategy = serializers.ChoiceField(
        choices=PairingStrategy.choices, source="round.pairing_strategy"
    )
    pair_selection = serializers.ChoiceField(
        choices=PairSelection.choices, source="round.pair_selection"
    )
    sampling = serializers.JSONField(source="round.sampling")
    guidance = serializers.CharField(source="round.guidance")
    created_at = serializers.DateTimeField(source="round.created_at")
    prompt_count = serializers.IntegerField()
    comparisons_created = serializers.IntegerField()
    jobs = GenerationJobOut(many=True)


class SamplingIn(serializers.Serializer[Any]):
    """The sampling settings (SAMPLING_FIELDS); one left out takes its default."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return serializer_fields(SAMPLING_FIELDS, with_default=True)


class RoundIn(serializers.Serializer[Any]):
    policy_id = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, help_text="The model version that generates the round."
    )
    pairing_strategy = serializers.ChoiceField(
        choices=PairingStrategy.choices, default=PairingStrategy.ON_POLICY
    )
    prompt_choice = serializers.ChoiceField(choices=list(PROMPT_CHOICES), default="least_used")
    pair_selection = serializers.ChoiceField(
        choices=PairSelection.choices,
        default=PairSelection.ADJACENT,
        help_text="Which of a prompt's samples make its on-policy pair (K > 2 for all but "
        "adjacent); recorded on each comparison.",
    )
    sampling = SamplingIn(required=False)
    guidance = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=MAX_GUIDANCE_CHARS,
        help_text="What the annotators prefer, in a sentence or two: added to the prompt of "
        "half of each prompt's on-policy samples (samples_per_prompt even); the pairs keep "
        "the plain prompt.",
    )

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # train_prompts, eval_prompts, samples_per_prompt: the fields of ROUND_SIZE_FIELDS.
        return {**super().get_fields(), **serializer_fields(ROUND_SIZE_FIELDS, with_default=True)}


class RoundListApi(ProjectApi):
    min_role = Role.LEAD
    throttle_classes = [ExpensiveRequestThrottle]
    expensive_methods = ("POST",)

    @extend_schema(
        operation_id="rounds_list",
        tags=["rounds"],
        responses={200: RoundOut(many=True), **ERRORS},
        summary="The project's rounds, newest first (leads)",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        rows = round_list_for_project(project=project)
        return Response(RoundOut(rows, many=True).data)

    @extend_schema(
        operation_id="rounds_start",
        tags=["rounds"],
        request=RoundIn,
        responses={201: RoundOut, **BODY_ERRORS, **REJECTED, **THROTTLED},
        summary="Start the next round: choose prompts, generate, form comparisons (leads)",
    )
    def post(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        body = RoundIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        policy = _version(
            ModelVersion.objects.filter(project=project), data["policy_id"], "policy_id"
        )
        sampling = data.get("sampling") or {}
        round_ = round_next_start(
            project=project,
            policy=policy,
            train_count=data["train_prompts"],
            eval_count=data["eval_prompts"],
            samples_per_prompt=data["samples_per_prompt"],
            sampling=SamplingSettings(**sampling),
            strategy=data["pairing_strategy"],
            pair_selection=data["pair_selection"],
            created_by=request.user,  # type: ignore[arg-type]
            prompt_choice=data["prompt_choice"],
            guidance=data["guidance"],
        )
        return Response(_round_detail(project, round_.number), status=status.HTTP_201_CREATED)


def _round_detail(project: Project, number: int) -> Any:
    detail = round_detail_get(project=project, number=number)
    if detail is None:
        raise Http404("No such round.")
    row = RoundRow(
        round=detail.round,
        prompt_count=detail.train_prompt_count + detail.eval_prompt_count,
        comparisons_created=detail.comparisons.created,
        jobs=[job_row.job for job_row in detail.jobs],
    )
    return RoundOut(row).data


class RoundDetailApi(ProjectApi):
    min_role = Role.LEAD

    @extend_schema(
        operation_id="rounds_retrieve",
        tags=["rounds"],
        responses={200: RoundOut, **ERRORS},
        summary="A round and its generation jobs (leads)",
    )
    def get(self, request: Request, slug: str, number: int) -> Response:
        project = self.project(request, slug)
        return Response(_round_detail(project, number))


# Training runs ------------------------------------------------------------------------------


class SnapshotOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    n_pairs = serializers.IntegerField()
    content_hash = serializers.CharField()
    filters = serializers.JSONField()
    validation_pairs = serializers.SerializerMethodField()

    def get_validation_pairs(self, snapshot: DatasetSnapshot) -> int:
        return len(snapshot.validation_pair_ids)


class TrainingRunOut(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    base_version_id = serializers.IntegerField()
    output_version_id = serializers.IntegerField(allow_null=True)
    start_from = serializers.ChoiceField(choices=StartFrom.choices)
    reference = serializers.ChoiceField(choices=Reference.choices)
    data_scope = serializers.ChoiceField(choices=DataScope.choices)
    snapshot = SnapshotOut()
    config = serializers.JSONField(help_text="The training settings.")
    progress_done = serializers.IntegerField()
    progress_total = serializers.IntegerField()
    summary = serializers.JSONField(
        help_text="When done: steps, train_loss, seconds_per_step, pairs, model_version, and "
        "validation (held-out pairs scored before and after, or null)."
    )
    error = serializers.CharField(allow_blank=True)
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    heartbeat_at = serializers.DateTimeField(allow_null=True)


class TrainingRunDetailOut(TrainingRunOut):
    points = serializers.SerializerMethodField(
        help_text="The metric series: step, epoch, loss, reward accuracy and margins."
    )
    log_tail = serializers.CharField(allow_blank=True)

    # The points as the worker recorded them: a FloatField would turn a step of 1 into 1.0.
    @extend_schema_field(
        serializers.ListField(
            child=serializers.DictField(child=serializers.FloatField(allow_null=True))
        )
    )
    def get_points(self, run: TrainingRunModel) -> list[dict[str, Any]]:
        return training_run_points(run=run)


class TrainingSettingsIn(serializers.Serializer[Any]):
    """The hyperparameters (TRAINING_FIELDS). No defaults here: what is left out comes from
    the preset, or the engine's defaults."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return serializer_fields(TRAINING_FIELDS)


class TrainingRunIn(serializers.Serializer[Any]):
    base_version_id = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, help_text="The version to start from: the new one's parent."
    )
    preset = serializers.ChoiceField(
        choices=list(TRAINING_PRESETS),
        required=False,
        help_text="Start from a preset's settings; `settings` overrides any of them.",
    )
    settings = TrainingSettingsIn(
        required=False,
        help_text="Any of the preset's settings; each field's range is in its description.",
    )
    start_from = serializers.ChoiceField(
        choices=StartFrom.choices,
        default=TrainingPlan.start_from,
        help_text="parent: continue the parent's adapter; base: a fresh adapter on the base.",
    )
    reference = serializers.ChoiceField(
        choices=[Reference.PARENT, Reference.BASE],
        default=TrainingPlan.reference,
        help_text="The reference policy of DPO and KTO (ORPO and SimPO use none).",
    )
    data_scope = serializers.ChoiceField(
        choices=DataScope.choices,
        required=False,
        help_text="cumulative: every round's pairs; round: the parent's round only; rounds: "
        "the `rounds` listed. Default: rounds when `rounds` is given, else cumulative.",
    )
    rounds = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=MAX_ID),
        required=False,
        max_length=1000,
        help_text="With data_scope `rounds`: the rounds whose pairs to train on.",
    )
    min_agreement = serializers.FloatField(default=0.0, min_value=0.0, max_value=1.0)


class TrainingRunListApi(ProjectApi):
    min_role = Role.LEAD
    throttle_classes = [ExpensiveRequestThrottle]
    expensive_methods = ("POST",)

    @extend_schema(
        operation_id="training_runs_list",
        tags=["training"],
        responses={200: TrainingRunOut(many=True), **ERRORS},
        summary="The project's training runs, newest first (leads)",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        rows = training_run_list_for_project(project=project)
        return Response(TrainingRunOut([row.run for row in rows], many=True).data)

    @extend_schema(
        operation_id="training_runs_start",
        tags=["training"],
        request=TrainingRunIn,
        responses={201: TrainingRunOut, **BODY_ERRORS, **REJECTED, **THROTTLED},
        summary="Train a new model version on a frozen snapshot of the pairs (leads)",
    )
    def post(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        body = TrainingRunIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        overrides = dict(data.get("settings") or {})
        base = _version(
            ModelVersion.objects.filter(project=project), data["base_version_id"], "base_version_id"
        )
        run = training_run_start(
            project=project,
            base_version=base,
            training=(
                TrainingSettings.from_preset(data["preset"], **overrides)
                if "preset" in data
                else TrainingSettings.from_mapping(overrides)
            ),
            plan=TrainingPlan.chosen(
                start_from=data["start_from"],
                reference=data["reference"],
                data_scope=data.get("data_scope"),
                rounds=data.get("rounds", ()),
            ),
            filters=SnapshotFilters(min_agreement=data["min_agreement"]),
            created_by=request.user,  # type: ignore[arg-type]
        )
        run = training_run_get(project=project, run_id=run.pk) or run
        return Response(TrainingRunOut(run).data, status=status.HTTP_201_CREATED)


class TrainingRunDetailApi(ProjectApi):
    min_role = Role.LEAD

    @extend_schema(
        operation_id="training_runs_retrieve",
        tags=["training"],
        responses={200: TrainingRunDetailOut, **ERRORS},
        summary="A training run with its live metric series and log tail (leads)",
    )
    def get(self, request: Request, slug: str, run_id: int) -> Response:
        project = self.project(request, slug)
        run = access_training_run(project=project, run_id=run_id)
        return Response(TrainingRunDetailOut(run).data)


# Leaderboard --------------------------------------------------------------------------------


class WinRateOut(serializers.Serializer[Any]):
    rate = serializers.FloatField()
    low = serializers.FloatField()
    high = serializers.FloatField()
    n = serializers.IntegerField()
    wins = serializers.IntegerField()
    losses = serializers.IntegerField()
    ties = serializers.IntegerField()


class LeaderboardOut(serializers.Serializer[Any]):
    # Of a Leaderboard. (Comments, not docstrings: the schema shows those.)
    games = serializers.IntegerField(help_text="Judged head-to-head comparisons.")
    ratings = inline_serializer(
        "RatingOut",
        {
            "model_version_id": serializers.IntegerField(source="version.pk"),
            "name": serializers.CharField(source="version.name"),
            "rating": serializers.FloatField(
                source="rating.rating", help_text="Bradley-Terry, base version at 1000."
            ),
            "low": serializers.FloatField(source="rating.low"),
            "high": serializers.FloatField(source="rating.high"),
            "games": serializers.IntegerField(source="rating.games"),
            "score": serializers.FloatField(source="rating.score"),
        },
        many=True,
        source="rows",
    )
    head_to_heads = inline_serializer(
        "HeadToHeadOut",
        {
            "round": serializers.IntegerField(source="round_number"),
            "model_version_id": serializers.IntegerField(source="new.pk"),
            "parent_id": serializers.IntegerField(source="parent.pk"),
            "outcome": serializers.ChoiceField(
                choices=["better", "worse", "undecided"], source="verdict.outcome"
            ),
            "win_rate": WinRateOut(source="verdict.win_rate"),
            "more_needed": serializers.IntegerField(allow_null=True, source="verdict.more_needed"),
        },
        many=True,
    )


class LeaderboardApi(ProjectApi):
    min_role = Role.LEAD

    @extend_schema(
        operation_id="leaderboard_retrieve",
        tags=["models"],
        responses={200: LeaderboardOut, **ERRORS},
        summary="Ratings of every model version from the blind head-to-heads, and each "
        "round's verdict on its new version (leads)",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        board = leaderboard_get(project=project)
        return Response(LeaderboardOut(board).data)


class TrainingRunCancelApi(ProjectApi):
    min_role = Role.LEAD

    @extend_schema(
        operation_id="training_runs_cancel",
        tags=["training"],
        request=None,
        responses={200: TrainingRunOut, **ERRORS},
        summary="Cancel a run: a queued one never starts, a running one stops after its "
        "current step and keeps its adapter (leads)",
    )
    def post(self, request: Request, slug: str, run_id: int) -> Response:
        project = self.project(request, slug)
        run = access_training_run(project=project, run_id=run_id)
        training_run_cancel(run=run)
        run = training_run_get(project=project, run_id=run_id) or run
        return Response(TrainingRunOut(run).data)
