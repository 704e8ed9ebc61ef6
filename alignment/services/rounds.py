"""Rounds: the prompts a round takes, its sampling settings, its generation jobs, the lead's sign-off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Max, QuerySet

from alignment.engine.spec import SamplingParameters, field_specs, sampling_problem, setting
from alignment.models import (
    GenerationJob,
    ModelVersion,
    PairingStrategy,
    PairSelection,
    Round,
    RoundSignOff,
)
from annotate.coverage import prompts_for_coverage
from annotate.models import Project, Prompt, Purpose, Split
from annotate.ranking import K_MAX, K_MIN
from core.errors import ValidationFailed


@dataclass(frozen=True, kw_only=True)
class SamplingSettings(SamplingParameters):
    """A round's sampling (alignment.engine.spec: defaults and bounds); `validate` raises
    ValidationFailed naming the field."""

    def validate(self) -> SamplingSettings:
        problem = sampling_problem(self)
        if problem is not None:
            raise ValidationFailed(problem)
        return self


@dataclass(frozen=True, kw_only=True)
class RoundSize:
    """How many prompts a round takes and how many samples of each: the defaults and bounds
    of the lead's page and the API."""

    train_prompts: int = setting(
        40,
        label="Training prompts",
        low=0,
        high=100_000,
        help="Chosen least used first. Used by on-policy pairs.",
    )
    eval_prompts: int = setting(
        20,
        label="Held-out prompts for head-to-head",
        low=0,
        high=100_000,
        help="The project's held-out (eval split) prompts, in id order.",
    )
    samples_per_prompt: int = setting(2, label="Samples per prompt", low=1, high=64)


ROUND_SIZE_FIELDS = field_specs(RoundSize)


MAX_GUIDANCE_CHARS = 2000

PROMPT_CHOICES = {
    "least_used": "Least used first",
    "coverage": "Fill under-covered clusters first (from the last coverage statistics)",
}


def training_prompts_least_used(*, project: Project) -> QuerySet[Prompt]:
    """The project's training prompts, those in the fewest rounds first: a prompt a round has
    taken counts as used before its responses are even generated."""
    return (
        project.prompts.filter(split=Split.TRAIN)
        .annotate(uses=Count("rounds"))
        .order_by("uses", "id")
    )


def round_prompts_choose(*, project: Project, count: int) -> list[Prompt]:
    """Training prompts for a new round: the least used first (fresh prompts before reused)."""
    return list(training_prompts_least_used(project=project)[: max(count, 0)])


def round_prompts_for_coverage(*, project: Project, count: int) -> list[Prompt]:
    """Training prompts for a new round that fill the under-covered clusters first, the least
    used first within a cluster (see annotate.coverage.prompts_for_coverage)."""
    return prompts_for_coverage(
        project=project,
        count=count,
        least_used_first=training_prompts_least_used(project=project),
    )


def eval_prompts_choose(*, project: Project, count: int) -> list[Prompt]:
    """The first `count` held-out prompts in id order: the same head-to-head set every round."""
    return list(project.prompts.filter(split=Split.EVAL).order_by("id")[: max(count, 0)])


def round_next_start(
    *,
    project: Project,
    policy: ModelVersion,
    train_count: int,
    eval_count: int,
    samples_per_prompt: int = RoundSize.samples_per_prompt,
    sampling: SamplingSettings | None = None,
    strategy: str = PairingStrategy.ON_POLICY,
    pair_selection: str = PairSelection.ADJACENT,
    created_by: User | None = None,
    prompt_choice: str = "least_used",
    guidance: str = "",
) -> Round:
    """Start the next round with prompts chosen for the strategy: fresh training prompts
    first, or (`prompt_choice="coverage"`) those that fill the under-covered clusters."""
    on_policy = strategy in (PairingStrategy.ON_POLICY, PairingStrategy.BOTH)
    head_to_head = strategy in (PairingStrategy.HEAD_TO_HEAD, PairingStrategy.BOTH)
    if prompt_choice not in PROMPT_CHOICES:
        raise ValidationFailed(f"Unknown prompt choice {prompt_choice!r}.")
    choose = round_prompts_for_coverage if prompt_choice == "coverage" else round_prompts_choose
    return round_start(
        project=project,
        policy=policy,
        train_prompts=choose(project=project, count=train_count) if on_policy else (),
        eval_prompts=eval_prompts_choose(project=project, count=eval_count) if head_to_head else (),
        samples_per_prompt=samples_per_prompt,
        sampling=sampling,
        strategy=strategy,
        pair_selection=pair_selection,
        created_by=created_by,
        guidance=guidance,
    )


def round_start(
    *,
    project: Project,
    policy: ModelVersion,
    train_prompts: Sequence[Prompt] = (),
    eval_prompts: Sequence[Prompt] = (),
    samples_per_prompt: int = RoundSize.samples_per_prompt,
    sampling: SamplingSettings | None = None,
    strategy: str = PairingStrategy.ON_POLICY,
    pair_selection: str = PairSelection.ADJACENT,
    created_by: User | None = None,
    guidance: str = "",
    dispatch: bool = True,
) -> Round:
    """Create the next round and queue its generation jobs.

    on_policy: `samples_per_prompt` samples of `policy` per training prompt, paired with each
    other as they are generated. head_to_head: `samples_per_prompt` samples of `policy` and
    of its parent per held-out prompt, paired sample by sample when both jobs are done
    (evaluation, never trained on). `pair_selection` other than adjacent makes one on-policy
    pair per prompt out of its K samples (alignment.engine.selection), recorded on the
    comparison. `guidance` (what the annotators prefer, in a sentence or two) is added to the
    prompt of half of each prompt's on-policy samples: those show the annotators what the
    policy seldom writes unprompted, and the pairs (and training) keep the plain prompt, so
    the next policy learns to write it unprompted. `dispatch=False` leaves the jobs queued for
    the caller to execute in-process (the headless loop check).
    """
    guidance = guidance.strip()
    sampling = (sampling or SamplingSettings()).validate()
    _round_check(
        project=project,
        policy=policy,
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        samples_per_prompt=samples_per_prompt,
        strategy=strategy,
        pair_selection=pair_selection,
        guidance=guidance,
    )
    on_policy = strategy in (PairingStrategy.ON_POLICY, PairingStrategy.BOTH)
    head_to_head = strategy in (PairingStrategy.HEAD_TO_HEAD, PairingStrategy.BOTH)
    config = asdict(sampling)
    with transaction.atomic():
        number = (Round.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1
        round_ = Round.objects.create(
            project=project,
            number=number,
            policy=policy,
            samples_per_prompt=samples_per_prompt,
            pairing_strategy=strategy,
            pair_selection=pair_selection,
            sampling=config,
            guidance=guidance,
            created_by=created_by,
        )
        round_.prompts.set([*train_prompts, *eval_prompts])
        jobs = []
        if on_policy:
            jobs.append(
                _generation_job_create(
                    round_,
                    policy,
                    train_prompts,
                    Purpose.TRAIN,
                    {**config, "samples_per_prompt": samples_per_prompt, "guidance": guidance},
                )
            )
        if head_to_head:
            assert policy.parent is not None
            for version in (policy, policy.parent):
                jobs.append(
                    _generation_job_create(
                        round_,
                        version,
                        eval_prompts,
                        Purpose.EVAL,
                        {**config, "samples_per_prompt": samples_per_prompt},
                    )
                )
        if dispatch:
            for job in jobs:
                generation_dispatch(job.pk)
    return round_


def _round_check(
    *,
    project: Project,
    policy: ModelVersion,
    train_prompts: Sequence[Prompt],
    eval_prompts: Sequence[Prompt],
    samples_per_prompt: int,
    strategy: str,
    pair_selection: str,
    guidance: str = "",
) -> None:
    """Refuse a round that cannot be generated as asked, naming why."""
    if policy.project_id != project.pk:
        raise ValidationFailed("That model version belongs to another project.")
    if strategy not in PairingStrategy.values:
        raise ValidationFailed(f"Unknown pairing strategy {strategy!r}.")
    on_policy = strategy in (PairingStrategy.ON_POLICY, PairingStrategy.BOTH)
    head_to_head = strategy in (PairingStrategy.HEAD_TO_HEAD, PairingStrategy.BOTH)
    if on_policy and not train_prompts:
        raise ValidationFailed("On-policy pairs need training prompts; the project has none left.")
    rating = pair_selection == PairSelection.RATING
    if samples_per_prompt < 1 or (on_policy and not rating and samples_per_prompt < 2):
        raise ValidationFailed("On-policy pairs need at least 2 samples per prompt.")
    if pair_selection not in PairSelection.values:
        raise ValidationFailed(f"pair_selection must be one of {', '.join(PairSelection.values)}.")
    if pair_selection == PairSelection.RANKING and not K_MIN <= samples_per_prompt <= K_MAX:
        raise ValidationFailed(
            f"A ranking orders {K_MIN} to {K_MAX} samples per prompt, not {samples_per_prompt}."
        )
    if pair_selection not in (PairSelection.ADJACENT, PairSelection.RATING) and (
        samples_per_prompt < 3
    ):
        raise ValidationFailed(
            "Choosing the pair to show needs at least 3 samples per prompt (K > 2)."
        )
    if len(guidance) > MAX_GUIDANCE_CHARS:
        raise ValidationFailed(f"The guidance must be at most {MAX_GUIDANCE_CHARS} characters.")
    if guidance and not on_policy:
        raise ValidationFailed("Guidance steers on-policy samples; this round makes none.")
    if guidance and samples_per_prompt % 2:
        raise ValidationFailed(
            "Guided rounds need an even number of samples per prompt: half are guided."
        )
    if head_to_head and policy.parent is None:
        raise ValidationFailed(
            "Head-to-head needs a model version with a parent; the base has none."
        )
    if head_to_head and not eval_prompts:
        raise ValidationFailed(
            "Head-to-head needs held-out evaluation prompts; the project has none."
        )
    if any(p.split != Split.EVAL for p in eval_prompts) or any(
        p.split != Split.TRAIN for p in train_prompts
    ):
        raise ValidationFailed(
            "Training prompts must be in the train split and evaluation prompts held out."
        )


def _generation_job_create(
    round_: Round,
    version: ModelVersion,
    prompts: Sequence[Prompt],
    purpose: str,
    config: dict[str, Any],
) -> GenerationJob:
    job = GenerationJob.objects.create(
        project=round_.project,
        round=round_,
        model_version=version,
        purpose=purpose,
        config=config,
        progress_total=len(prompts),
        created_by=round_.created_by,
    )
    job.prompts.set(prompts)
    return job


def generation_dispatch(job_id: int) -> None:
    from alignment.tasks import generation_job_run

    transaction.on_commit(lambda: generation_job_run.delay(job_id))


def round_sign_off(
    *, round_: Round, figures: dict[str, Any], signed_off_by: User, note: str = ""
) -> RoundSignOff:
    """Record that the lead reviewed the round (its review's headline `figures` then); the
    next run trained on the round's policy's data carries the latest sign-off."""
    if len(note) > 4000:
        raise ValidationFailed("The note must be at most 4000 characters.")
    return RoundSignOff.objects.create(
        round=round_, signed_off_by=signed_off_by, note=note.strip(), figures=figures
    )
