"""Training runs at request time: the lead's plan, the frozen snapshot, queueing, cancelling,
the memory pre-flight and sending contradicted pairs back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from alignment.engine.memory import MemoryEstimate, memory_estimate, model_shape
from alignment.engine.training import REFERENCE_FREE, PreferenceExample, sequence_tokens
from alignment.models import (
    DataScope,
    ModelVersion,
    Reference,
    Round,
    RoundSignOff,
    StartFrom,
    TrainingRun,
)
from alignment.services.training_settings import TrainingSettings
from annotate.models import Comparison, PairKind, PreferencePair, Project
from annotate.services.comparisons import comparison_send_back
from annotate.services.snapshots import SnapshotFilters, snapshot_create
from core.errors import ValidationFailed
from core.jobs import job_cancel
from core.models import ACTIVE_STATUSES

ONE_ACTIVE_RUN = "This project already has a training run queued or running."


@dataclass(frozen=True)
class TrainingPlan:
    """A round's choices, made by the lead and recorded on the run: where training starts
    (the parent's adapter, or a fresh one on the base model), the reference policy (the
    parent's, or the base model's) and the data (every round's pairs, the parent's round's
    only, or the rounds listed)."""

    start_from: str = StartFrom.PARENT
    reference: str = Reference.PARENT
    data_scope: str = DataScope.CUMULATIVE
    rounds: tuple[int, ...] = ()  # with data_scope "rounds"

    @classmethod
    def chosen(
        cls,
        *,
        start_from: str | None = None,
        reference: str | None = None,
        data_scope: str | None = None,
        rounds: Sequence[int] = (),
    ) -> TrainingPlan:
        """The plan of a lead's choices (from the page or the API): a choice left out takes
        its default, and rounds listed without a data scope mean "the rounds listed"."""
        listed = tuple(sorted(set(rounds)))
        return cls(
            start_from=start_from or cls.start_from,
            reference=reference or cls.reference,
            data_scope=data_scope or (DataScope.ROUNDS if listed else cls.data_scope),
            rounds=listed,
        )

    def validate(self) -> TrainingPlan:
        if self.start_from not in StartFrom.values:
            raise ValidationFailed(f"start_from must be one of {', '.join(StartFrom.values)}.")
        if self.reference not in (Reference.PARENT, Reference.BASE):
            raise ValidationFailed("reference must be parent or base.")
        if self.data_scope not in DataScope.values:
            raise ValidationFailed(f"data_scope must be one of {', '.join(DataScope.values)}.")
        if (self.data_scope == DataScope.ROUNDS) != bool(self.rounds):
            raise ValidationFailed(
                "List the rounds to train on when data_scope is 'rounds' (the rounds listed), "
                "and only then."
            )
        return self

    def rounds_for(self, *, project: Project, parent: ModelVersion) -> tuple[int, ...]:
        """The rounds whose pairs the run takes (empty: every round)."""
        if self.data_scope == DataScope.CUMULATIVE:
            return ()
        if self.data_scope == DataScope.ROUND:
            numbers = tuple(
                Round.objects.filter(project=project, policy=parent)
                .order_by("number")
                .values_list("number", flat=True)
            )
            if not numbers:
                raise ValidationFailed(
                    f"No round was generated with {parent.name}, so it has no round of its own "
                    "to train on; take every round's pairs or list the rounds."
                )
            return numbers
        # Rounds as the comparisons carry them (imported ones too, made without a Round).
        known = set(
            Comparison.objects.filter(project=project, round_number__in=self.rounds).values_list(
                "round_number", flat=True
            )
        )
        missing = sorted(set(self.rounds) - known)
        if missing:
            raise ValidationFailed(
                f"This project has no comparisons in round {', '.join(str(n) for n in missing)}."
            )
        return tuple(sorted(set(self.rounds)))


@dataclass(frozen=True)
class EffectivePlan:
    """Where a run's training starts and what it is measured against, as it will run (the
    lead's choice resolved against the parent): the run page and the run's log say the same."""

    continues: bool  # training continues the parent's adapter
    starts: str
    reference: str  # the engine's reference: "base", "start", or an adapter directory
    reference_sha256: str | None
    reference_text: str


def training_plan_effective(run: TrainingRun) -> EffectivePlan:
    base_version = run.base_version
    continues = run.start_from == StartFrom.PARENT and not base_version.is_base
    reference_sha256: str | None
    if run.reference == Reference.BASE:
        reference, reference_sha256 = "base", None
    elif run.reference == Reference.PARENT and not continues and not base_version.is_base:
        # A fresh adapter trained against the parent's policy.
        reference, reference_sha256 = base_version.adapter_path, base_version.adapter_sha256
    else:  # the parent's policy when training continues it; no reference for ORPO, SimPO
        reference, reference_sha256 = "start", None
    if run.reference == Reference.NONE:
        reference_text = "none (the method uses no reference model)"
    elif reference == "base" or (reference == "start" and not continues):
        reference_text = "the base model"
    else:
        reference_text = f"{base_version.name} (its adapter, frozen)"
    return EffectivePlan(
        continues=continues,
        starts=(
            f"continuing {base_version.name}'s adapter"
            if continues
            else "a fresh adapter on the base model"
        ),
        reference=reference,
        reference_sha256=reference_sha256 or None,
        reference_text=reference_text,
    )


def training_run_start(
    *,
    project: Project,
    base_version: ModelVersion,
    training: TrainingSettings,
    plan: TrainingPlan | None = None,
    filters: SnapshotFilters | None = None,
    created_by: User | None = None,
    dispatch: bool = True,
) -> TrainingRun:
    """Queue a run on a frozen snapshot. `plan` picks the start, the reference and the
    rounds (any rounds in `filters` give way to it); `filters` the agreement and the
    validation share."""
    training.validate()
    plan = (plan or TrainingPlan()).validate()
    if base_version.project_id != project.pk:
        raise ValidationFailed("That model version belongs to another project.")
    rounds = plan.rounds_for(project=project, parent=base_version)
    reference = Reference.NONE if training.method in REFERENCE_FREE else plan.reference
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if TrainingRun.objects.filter(project=project, status__in=ACTIVE_STATUSES).exists():
            raise ValidationFailed(ONE_ACTIVE_RUN)
        filters = replace(
            filters or SnapshotFilters(), rounds=rounds, kinds=_method_pair_kinds(training)
        )
        snapshot = snapshot_create(project=project, filters=filters, created_by=created_by)
        try:
            with transaction.atomic():
                run = TrainingRun.objects.create(
                    project=project,
                    base_version=base_version,
                    sign_off=RoundSignOff.objects.filter(
                        round__project=project, round__policy=base_version
                    ).first(),
                    start_from=plan.start_from,
                    reference=reference,
                    data_scope=plan.data_scope,
                    snapshot=snapshot,
                    config=asdict(training),
                    created_by=created_by,
                )
        except IntegrityError:  # the constraint behind the check above
            raise ValidationFailed(ONE_ACTIVE_RUN) from None
        run.output_dir = str(Path(settings.ARTIFACTS_DIR) / "runs" / str(run.pk))
        run.save(update_fields=["output_dir"])
        if dispatch:
            training_run_dispatch(run.pk)
    return run


def _method_pair_kinds(training: TrainingSettings) -> tuple[str, ...]:
    """KTO learns from ties (both desirable), both-bad pairs (both undesirable) and ratings
    (one response, desirable or not) as well."""
    if training.method == "kto":
        return (PairKind.PREFERENCE, PairKind.TIE, PairKind.BOTH_BAD, PairKind.GOOD, PairKind.BAD)
    return (PairKind.PREFERENCE,)


def training_run_memory_estimate(
    *, project: Project, training: TrainingSettings
) -> MemoryEstimate | None:
    """The pre-flight estimate of a run's peak memory with these settings, for the page
    (the worker checks the same against its own memory before it loads anything). None when
    the model is not a local directory the web process can read."""
    source = project.base_model
    path = (
        Path(settings.MODELS_DIR) / source.split(":", 1)[1]
        if source.startswith("packaged:")
        else Path(source)
    )
    shape = model_shape(str(path)) if path.is_dir() else None
    if shape is None:
        return None
    pairs = (
        PreferencePair.objects.filter(project=project)
        .select_related("comparison__prompt", "chosen", "rejected")
        .order_by("-id")[:500]
    )
    examples = [
        PreferenceExample(
            prompt=tuple(p.comparison.prompt.messages),
            chosen=p.chosen.text,
            rejected=p.rejected.text,
        )
        for p in pairs
    ]
    return memory_estimate(
        shape=shape,
        method=training.method,
        batch_size=training.batch_size,
        tokens_per_sequence=(
            sequence_tokens(examples, training.max_length) if examples else training.max_length
        ),
        lora_r=training.lora_r,
        quantize_4bit=settings.TRAINING_QUANTIZE_4BIT,
        compute_bytes=2,
        optimizer=training.optimizer,
    )


def training_run_cancel(*, run: TrainingRun) -> bool:
    """Stop a run: a queued one never starts, a running one stops after its current step and
    keeps its adapter as it then stands (no model version is registered). Whether it was
    still queued or running."""
    return job_cancel(TrainingRun, job_id=run.pk)


def training_run_dispatch(run_id: int) -> None:
    from alignment.tasks import training_run_run

    transaction.on_commit(lambda: training_run_run.delay(run_id))


def contradictions_send_back(
    *, run: TrainingRun, comparison_ids: Sequence[int], reviewer: User
) -> tuple[int, list[str]]:
    """Send the chosen contradicted pairs back for fresh judgments. Only comparisons the run
    listed; returns how many went back and a message per one that could not."""
    listed = {c["comparison"] for c in run.summary.get("contradictions", []) if c["comparison"]}
    unknown = sorted(set(comparison_ids) - listed)
    if unknown:
        raise ValidationFailed(
            f"Comparison {', '.join(map(str, unknown))} is not among this run's contradictions."
        )
    sent, problems = 0, []
    for comparison in Comparison.objects.filter(pk__in=comparison_ids).order_by("id"):
        try:
            comparison_send_back(comparison=comparison, reviewer=reviewer)
        except ValidationFailed as error:
            problems.append(f"Comparison {comparison.pk}: {error}")
        else:
            sent += 1
    return sent, problems
