"""Writes of the machine side: model versions, rounds, generation jobs and training runs.

Jobs are created here and dispatched after commit; workers call the `*_execute` functions,
which claim the job, run the engine and record the outcome.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, QuerySet
from django.utils import timezone

from alignment.engine.generation import GenerationConfig, GenerationProgress, generate
from alignment.engine.memory import MemoryEstimate, memory_estimate, model_shape
from alignment.engine.selection import implicit_rewards, pair_select
from alignment.engine.sources import model_path_resolve
from alignment.engine.training import (
    REFERENCE_FREE,
    Contradiction,
    PreferenceExample,
    TrainingConfig,
    TrainingProgress,
    sequence_tokens,
    train,
)
from alignment.engine.vllm_backend import generate_vllm
from alignment.jobs import (
    JobLost,
    job_alive,
    job_cancel,
    job_claim,
    job_fail,
    job_heartbeat,
    job_log,
    job_requeue_stale,
    job_stopped,
    job_succeed,
)
from alignment.models import (
    ACTIVE_STATUSES,
    DataScope,
    GenerationJob,
    JobStatus,
    ModelVersion,
    PairingStrategy,
    PairSelection,
    Reference,
    RefLogp,
    Round,
    RoundSignOff,
    StartFrom,
    TrainingRun,
)
from annotate.coverage import prompts_for_coverage
from annotate.models import (
    Comparison,
    DatasetSnapshot,
    PairKind,
    PreferencePair,
    Project,
    Prompt,
    Purpose,
    Response,
    Split,
)
from annotate.services import (
    ResponseInput,
    SnapshotFilters,
    ValidationFailed,
    comparison_create,
    comparison_send_back,
    policy_create,
    responses_create,
    snapshot_create,
)

# Model versions -----------------------------------------------------------------------------


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


# Rounds and generation ----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 200
    temperature: float = 0.9
    top_p: float = 0.95
    seed: int = 0
    # Prompts per forward pass; 16 measured fastest on 2 cores (bench/engine_generation.py).
    batch_size: int = 16

    def validate(self) -> SamplingSettings:
        if not 8 <= self.max_new_tokens <= 4096:
            raise ValidationFailed("Max new tokens must be between 8 and 4096.")
        if not 0 <= self.temperature <= 5:
            raise ValidationFailed("Temperature must be between 0 and 5.")
        if not 0 < self.top_p <= 1:
            raise ValidationFailed("Top-p must be above 0 and at most 1.")
        if not 1 <= self.batch_size <= 256:
            raise ValidationFailed("Batch size must be between 1 and 256.")
        return self


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
    samples_per_prompt: int = 2,
    sampling: SamplingSettings | None = None,
    strategy: str = PairingStrategy.ON_POLICY,
    pair_selection: str = PairSelection.ADJACENT,
    created_by: User | None = None,
    prompt_choice: str = "least_used",
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
    )


def round_start(
    *,
    project: Project,
    policy: ModelVersion,
    train_prompts: Sequence[Prompt] = (),
    eval_prompts: Sequence[Prompt] = (),
    samples_per_prompt: int = 2,
    sampling: SamplingSettings | None = None,
    strategy: str = PairingStrategy.ON_POLICY,
    pair_selection: str = PairSelection.ADJACENT,
    created_by: User | None = None,
    dispatch: bool = True,
) -> Round:
    """Create the next round and queue its generation jobs.

    on_policy: `samples_per_prompt` samples of `policy` per training prompt, paired with each
    other as they are generated. head_to_head: `samples_per_prompt` samples of `policy` and
    of its parent per held-out prompt, paired sample by sample when both jobs are done
    (evaluation, never trained on). `pair_selection` other than adjacent makes one on-policy
    pair per prompt out of its K samples (alignment.engine.selection), recorded on the
    comparison. `dispatch=False` leaves the jobs queued for the caller
    to execute in-process (the headless loop check).
    """
    sampling = (sampling or SamplingSettings()).validate()
    if policy.project_id != project.pk:
        raise ValidationFailed("That model version belongs to another project.")
    if strategy not in PairingStrategy.values:
        raise ValidationFailed(f"Unknown pairing strategy {strategy!r}.")
    on_policy = strategy in (PairingStrategy.ON_POLICY, PairingStrategy.BOTH)
    head_to_head = strategy in (PairingStrategy.HEAD_TO_HEAD, PairingStrategy.BOTH)
    if on_policy and not train_prompts:
        raise ValidationFailed("On-policy pairs need training prompts; the project has none left.")
    if samples_per_prompt < 1 or (on_policy and samples_per_prompt < 2):
        raise ValidationFailed("On-policy pairs need at least 2 samples per prompt.")
    if pair_selection not in PairSelection.values:
        raise ValidationFailed(f"pair_selection must be one of {', '.join(PairSelection.values)}.")
    if pair_selection != PairSelection.ADJACENT and samples_per_prompt < 3:
        raise ValidationFailed(
            "Choosing the pair to show needs at least 3 samples per prompt (K > 2)."
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
                    {**config, "samples_per_prompt": samples_per_prompt},
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
                _dispatch_generation(job.pk)
    return round_


# The generation backends a worker can be configured with (settings.GENERATION_BACKEND).
GENERATORS = {"transformers": generate, "vllm": generate_vllm}


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


def _dispatch_generation(job_id: int) -> None:
    from alignment.tasks import generation_job_run

    transaction.on_commit(lambda: generation_job_run.delay(job_id))


def generation_job_execute(*, job_id: int) -> GenerationJob | None:
    """Run a queued generation job to its end; None when it was not queued (a redelivery).
    A later attempt (its worker was lost) generates only for the prompts not done yet."""
    job = job_claim(GenerationJob, job_id=job_id)
    if job is None:
        return None
    try:
        with job_alive(job, every=settings.JOB_HEARTBEAT_SECONDS):
            _generation_run(job)
    except JobLost:
        return job  # cancelled, or another worker has it now: stop and write nothing
    except Exception as error:
        job_fail(job, error=error)
        raise
    return job


def _generation_run(job: GenerationJob) -> None:
    version = job.model_version
    project = job.project
    round_ = job.round
    every_prompt = list(job.prompts.order_by("id"))
    # Each batch's responses and comparisons are committed together: what an earlier attempt
    # committed is done.
    done = set(
        Response.objects.filter(
            policy=version.policy, generation_params__generation_job=job.pk
        ).values_list("prompt_id", flat=True)
    )
    prompts = [p for p in every_prompt if p.pk not in done]
    cfg = job.config
    engine_config = GenerationConfig(
        model=project.base_model,
        models_dir=str(settings.MODELS_DIR),
        adapter=version.adapter_path or None,
        adapter_sha256=version.adapter_sha256 or None,
        samples_per_prompt=int(cfg.get("samples_per_prompt", 2)),
        max_new_tokens=int(cfg.get("max_new_tokens", 200)),
        temperature=float(cfg.get("temperature", 0.9)),
        top_p=float(cfg.get("top_p", 0.95)),
        seed=int(cfg.get("seed", 0)) + job.pk,
        batch_size=int(cfg.get("batch_size", 8)),
        trust_remote_code=project.trust_remote_code,
    )
    params = {k: cfg[k] for k in ("max_new_tokens", "temperature", "top_p") if k in cfg}
    params.update(
        model=project.base_model,
        adapter=version.adapter_path,
        model_version=version.name,
        generation_job=job.pk,
        round=round_.number,
    )
    rng = random.Random(engine_config.seed)
    counts = {"responses": 0, "comparisons": 0, "identical_skipped": 0}
    # The implicit reward needs every sample scored first: pairs are formed once all are in.
    pairs_at_the_end = round_.pair_selection == PairSelection.REWARD_GAP
    job_log(
        job,
        f"generating {engine_config.samples_per_prompt} sample(s) for {len(prompts)} prompts "
        f"with {version.name}"
        + (f" (attempt {job.attempts}: {len(done)} prompts done before)" if done else ""),
    )

    def on_progress(progress: GenerationProgress) -> None:
        rows = [
            ResponseInput(
                prompt_id=prompts[s.prompt_index].pk,
                text=s.text,
                generation_params={**params, "sample_index": s.sample_index},
                seed=s.seed,
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                finish_reason=s.finish_reason,
            )
            for s in progress.samples
        ]
        with transaction.atomic():
            created = responses_create(policy=version.policy, rows=rows)
            counts["responses"] += len(created)
            if job.purpose == Purpose.TRAIN and not pairs_at_the_end:
                _on_policy_pairs_create(created, round_, rng, counts)
        tokens_per_s = progress.tokens_generated / progress.elapsed_s if progress.elapsed_s else 0.0
        job.metrics.append(
            {
                "t": round(progress.elapsed_s, 2),
                "done": progress.done_prompts,
                "tokens": progress.tokens_generated,
                "tokens_per_s": round(tokens_per_s, 2),
            }
        )
        job_log(
            job,
            f"{len(done) + progress.done_prompts}/{len(every_prompt)} prompts, "
            f"{progress.tokens_generated} tokens, {tokens_per_s:.1f} tokens/s",
        )
        alive = job_heartbeat(
            job,
            fields={
                "progress_done": len(done) + progress.done_prompts,
                "metrics": job.metrics,
                "log_tail": job.log_tail,
            },
        )
        if not alive:
            raise JobLost(f"{job} was cancelled or handed to another worker")

    started = time.monotonic()
    samples = (
        GENERATORS[settings.GENERATION_BACKEND](
            engine_config, [p.messages for p in prompts], on_progress=on_progress
        )
        if prompts
        else []
    )
    elapsed = time.monotonic() - started
    tokens = sum(s.completion_tokens for s in samples)
    if job.purpose == Purpose.TRAIN and pairs_at_the_end:
        ours = Response.objects.filter(
            policy=version.policy, generation_params__generation_job=job.pk
        ).select_related("prompt")
        with transaction.atomic():
            _on_policy_pairs_create(list(ours.order_by("id")), round_, rng, counts)
    job.progress_done = len(every_prompt)
    job_succeed(
        job,
        summary={
            **counts,
            "tokens_generated": tokens,
            "elapsed_s": round(elapsed, 2),
            "tokens_per_s": round(tokens / elapsed, 2) if elapsed else 0.0,
        },
    )
    if job.purpose == Purpose.EVAL:
        head_to_head_pairs_form(round_=round_)


def _on_policy_pairs_create(
    responses: Sequence[Response],
    round_: Round,
    rng: random.Random,
    counts: dict[str, int],
) -> None:
    by_prompt: dict[int, list[Response]] = defaultdict(list)
    for response in responses:
        by_prompt[response.prompt_id].append(response)
    if round_.pair_selection != PairSelection.ADJACENT:
        _selected_pairs_create(by_prompt, round_, rng, counts)
        return
    for group in by_prompt.values():
        for first, second in zip(group[0::2], group[1::2], strict=False):
            _on_policy_pair_create(first, second, round_, rng, counts)


def _on_policy_pair_create(
    first: Response,
    second: Response,
    round_: Round,
    rng: random.Random,
    counts: dict[str, int],
    selection: dict[str, Any] | None = None,
) -> None:
    """A training comparison of two samples, unless they say the same thing."""
    if first.text.strip() == second.text.strip():
        counts["identical_skipped"] += 1
        return
    comparison_create(
        response_a=first,
        response_b=second,
        round_number=round_.number,
        purpose=Purpose.TRAIN,
        pairing_strategy=PairingStrategy.ON_POLICY,
        rng=rng,
        selection=selection,
    )
    counts["comparisons"] += 1


def _selected_pairs_create(
    by_prompt: dict[int, list[Response]],
    round_: Round,
    rng: random.Random,
    counts: dict[str, int],
) -> None:
    """One pair per prompt out of its K samples, by the round's pair selection."""
    strategy = str(round_.pair_selection)
    rewards: dict[int, float] = {}
    note = ""
    if strategy == PairSelection.REWARD_GAP:
        version = round_.policy
        if version.is_base:
            # The base is its own reference: every implicit reward is 0.
            strategy, note = PairSelection.MOST_DIFFERENT, "the base model has no implicit reward"
        else:
            flat = [r for group in by_prompt.values() for r in group]
            scores = implicit_rewards(
                model_path=model_path_resolve(
                    source=round_.project.base_model, models_dir=str(settings.MODELS_DIR)
                ),
                adapter=version.adapter_path,
                adapter_sha256=version.adapter_sha256 or None,
                items=[(r.prompt.messages, r.text) for r in flat],
                trust_remote_code=round_.project.trust_remote_code,
            )
            rewards = {r.pk: score for r, score in zip(flat, scores, strict=True)}
    for group in by_prompt.values():
        if len(group) < 2:
            continue
        chosen = pair_select(
            strategy,
            [r.text for r in group],
            rng=rng,
            rewards=[rewards[r.pk] for r in group] if rewards else None,
        )
        selection: dict[str, Any] = {
            "strategy": strategy,
            "k": len(group),
            "picked": [chosen.first, chosen.second],
            "score": chosen.score,
        }
        if rewards:
            selection["rewards"] = [round(rewards[r.pk], 4) for r in group]
        if note:
            selection["fallback"] = {"asked": PairSelection.REWARD_GAP, "why": note}
        first, second = group[chosen.first], group[chosen.second]
        _on_policy_pair_create(first, second, round_, rng, counts, selection)


def head_to_head_pairs_form(*, round_: Round) -> list[Comparison]:
    """Pair the policy's and its parent's held-out responses once both jobs have succeeded."""
    with transaction.atomic():
        round_ = (
            Round.objects.select_for_update(of=("self",))
            .select_related("policy__parent")
            .get(pk=round_.pk)
        )
        jobs = list(round_.generation_jobs.filter(purpose=Purpose.EVAL))
        if not jobs or any(job.status != JobStatus.SUCCEEDED for job in jobs):
            return []
        if Comparison.objects.filter(
            project=round_.project, round_number=round_.number, purpose=Purpose.EVAL
        ).exists():
            return []
        policy, parent = round_.policy, round_.policy.parent
        assert parent is not None
        job_ids = [job.pk for job in jobs]
        responses = (
            Response.objects.filter(generation_params__generation_job__in=job_ids)
            .select_related("prompt")
            .order_by("id")
        )
        new: dict[int, list[Response]] = defaultdict(list)
        old: dict[int, list[Response]] = defaultdict(list)
        for response in responses:
            (new if response.policy_id == policy.policy_id else old)[response.prompt_id].append(
                response
            )
        rng = random.Random(round_.pk)
        created = []
        for prompt_id, ours in new.items():
            for mine, theirs in zip(ours, old.get(prompt_id, []), strict=False):
                # Response a is always the new policy's; the sides shown are still randomised.
                created.append(
                    comparison_create(
                        response_a=mine,
                        response_b=theirs,
                        round_number=round_.number,
                        purpose=Purpose.EVAL,
                        pairing_strategy=PairingStrategy.HEAD_TO_HEAD,
                        rng=rng,
                    )
                )
        return created


# Training -----------------------------------------------------------------------------------

METHODS = {
    "dpo": "DPO (and its sibling losses)",
    "kto": "KTO (unpaired: uses ties and both-bad too)",
    "orpo": "ORPO (no reference model)",
    "simpo": "SimPO (no reference model)",
}
LOSS_TYPES = {
    "sigmoid": "DPO (sigmoid)",
    "ipo": "IPO",
    "hinge": "Hinge (SLiC)",
    "robust": "Robust DPO (noisy labels)",
}

# Starting points a lead picks from; every value stays editable. LoRA learning rates (the
# adapter, not the full model, is trained). Sources: the DPO, IPO, robust DPO (Chowdhury et
# al. 2024), RPO (DPO + SFT), KTO, ORPO and SimPO papers and TRL's documented defaults.
TRAINING_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpo": ("DPO", {"method": "dpo", "loss_type": "sigmoid", "beta": 0.1}),
    "ipo": ("IPO", {"method": "dpo", "loss_type": "ipo", "beta": 0.1}),
    "robust_dpo": (
        "Robust DPO, for noisy labels (10 % flipped)",
        {"method": "dpo", "loss_type": "robust", "beta": 0.1, "label_smoothing": 0.1},
    ),
    "hinge": ("Hinge (SLiC)", {"method": "dpo", "loss_type": "hinge", "beta": 0.1}),
    "dpo_sft": (
        "DPO + SFT term (keeps the chosen responses likely)",
        {"method": "dpo", "loss_type": "sigmoid", "beta": 0.1, "sft_weight": 1.0},
    ),
    "kto": (
        "KTO (ties and both-bad as unpaired examples)",
        {"method": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    ),
    "orpo": ("ORPO (no reference model)", {"method": "orpo", "beta": 0.1}),
    "simpo": (
        "SimPO (no reference model)",
        {"method": "simpo", "beta": 2.0, "simpo_gamma": 0.5},
    ),
}


# The defaults live once, in the engine; the lead's settings add the page's bounds on top.
_ENGINE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainingConfig)}


@dataclass(frozen=True)
class TrainingSettings:
    """The hyperparameters a lead sets for a run (engine defaults), with the page's bounds."""

    method: str = _ENGINE_DEFAULTS["method"]
    loss_type: str = _ENGINE_DEFAULTS["loss_type"]
    beta: float = _ENGINE_DEFAULTS["beta"]
    sft_weight: float = _ENGINE_DEFAULTS["sft_weight"]
    label_smoothing: float = _ENGINE_DEFAULTS["label_smoothing"]
    simpo_gamma: float = _ENGINE_DEFAULTS["simpo_gamma"]
    desirable_weight: float = _ENGINE_DEFAULTS["desirable_weight"]
    undesirable_weight: float = _ENGINE_DEFAULTS["undesirable_weight"]
    learning_rate: float = _ENGINE_DEFAULTS["learning_rate"]
    epochs: int = _ENGINE_DEFAULTS["epochs"]
    batch_size: int = _ENGINE_DEFAULTS["batch_size"]
    gradient_accumulation_steps: int = _ENGINE_DEFAULTS["gradient_accumulation_steps"]
    lora_r: int = _ENGINE_DEFAULTS["lora_r"]
    lora_alpha: int = _ENGINE_DEFAULTS["lora_alpha"]
    lora_dropout: float = _ENGINE_DEFAULTS["lora_dropout"]
    max_length: int = _ENGINE_DEFAULTS["max_length"]
    seed: int = _ENGINE_DEFAULTS["seed"]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TrainingSettings:
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValidationFailed(f"Unknown training settings: {', '.join(sorted(unknown))}.")
        values: dict[str, Any] = {}
        defaults = cls()
        for name, value in data.items():
            kind = type(getattr(defaults, name))
            try:
                values[name] = kind(value)
            except (TypeError, ValueError):
                raise ValidationFailed(
                    f"{name} must be a {kind.__name__}, got {value!r}."
                ) from None
        return cls(**values).validate()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainingSettings:
        """A preset's settings (TRAINING_PRESETS), with any of them overridden."""
        if name not in TRAINING_PRESETS:
            raise ValidationFailed(
                f"Unknown preset {name!r}; expected one of {', '.join(TRAINING_PRESETS)}."
            )
        return cls.from_mapping({**TRAINING_PRESETS[name][1], **overrides})

    def validate(self) -> TrainingSettings:
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}."),
            (self.loss_type in LOSS_TYPES, f"loss_type must be one of {', '.join(LOSS_TYPES)}."),
            (0 <= self.sft_weight <= 10, "sft_weight must be between 0 and 10."),
            (0 <= self.label_smoothing < 0.5, "label_smoothing must be at least 0 and below 0.5."),
            (0 <= self.simpo_gamma <= 10, "simpo_gamma must be between 0 and 10."),
            (0 < self.desirable_weight <= 10, "desirable_weight must be above 0 and at most 10."),
            (
                0 < self.undesirable_weight <= 10,
                "undesirable_weight must be above 0 and at most 10.",
            ),
            (
                self.method != "kto" or self.batch_size >= 2,
                "batch_size must be at least 2 for KTO (its KL estimate pairs the rows of a batch).",
            ),
            (0 < self.beta <= 10, "beta must be above 0 and at most 10."),
            (0 < self.learning_rate < 1, "learning_rate must be between 0 and 1."),
            (1 <= self.epochs <= 50, "epochs must be between 1 and 50."),
            (1 <= self.batch_size <= 256, "batch_size must be between 1 and 256."),
            (
                1 <= self.gradient_accumulation_steps <= 256,
                "gradient_accumulation_steps must be between 1 and 256.",
            ),
            (1 <= self.lora_r <= 512, "lora_r must be between 1 and 512."),
            (1 <= self.lora_alpha <= 4096, "lora_alpha must be between 1 and 4096."),
            (0 <= self.lora_dropout < 1, "lora_dropout must be at least 0 and below 1."),
            (32 <= self.max_length <= 32768, "max_length must be between 32 and 32768."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValidationFailed(message)
        return self


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
            _dispatch_training(run.pk)
    return run


def _method_pair_kinds(training: TrainingSettings) -> tuple[str, ...]:
    """KTO learns from ties (both desirable) and both-bad pairs (both undesirable) as well."""
    if training.method == "kto":
        return (PairKind.PREFERENCE, PairKind.TIE, PairKind.BOTH_BAD)
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
    )


def training_run_cancel(*, run: TrainingRun) -> bool:
    """Stop a run: a queued one never starts, a running one stops after its current step and
    keeps its adapter as it then stands (no model version is registered). Whether it was
    still queued or running."""
    return job_cancel(TrainingRun, job_id=run.pk)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _dispatch_training(run_id: int) -> None:
    from alignment.tasks import training_run_run

    transaction.on_commit(lambda: training_run_run.delay(run_id))


CONTRADICTIONS_KEPT = 500


def _contradictions_record(
    frozen: Sequence[FrozenPair], found: Sequence[Contradiction]
) -> list[dict[str, Any]]:
    """The run summary's list: pairs by id with their comparison, most disagreeing first."""
    pair_ids = [frozen[c.index].pair_id for c in found[:CONTRADICTIONS_KEPT]]
    comparisons = dict(
        PreferencePair.objects.filter(pk__in=pair_ids).values_list("pk", "comparison_id")
    )
    return [
        {"pair": pair_id, "comparison": comparisons.get(pair_id), "margin": round(c.margin, 4)}
        for pair_id, c in zip(pair_ids, found, strict=False)
    ]


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


def jobs_recover() -> list[tuple[GenerationJob | TrainingRun, str]]:
    """Find jobs whose worker died (no heartbeat for JOB_HEARTBEAT_STALE_SECONDS) and hand
    them to the next worker, or fail them after JOB_MAX_ATTEMPTS attempts. A requeued
    training run resumes from its newest complete checkpoint; a generation job does the
    prompts it had not done. Runs every minute (Celery beat); returns what it changed."""
    heartbeat_before = timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_STALE_SECONDS)
    changed: list[tuple[GenerationJob | TrainingRun, str]] = []
    kinds: list[tuple[type[GenerationJob] | type[TrainingRun], Callable[[int], None]]] = [
        (GenerationJob, _dispatch_generation),
        (TrainingRun, _dispatch_training),
    ]
    with transaction.atomic():
        for model, dispatch in kinds:
            for job, outcome in job_requeue_stale(
                model, heartbeat_before=heartbeat_before, max_attempts=settings.JOB_MAX_ATTEMPTS
            ):
                if outcome == "requeued":
                    dispatch(job.pk)
                changed.append((job, outcome))
    return changed


@dataclass(frozen=True)
class FrozenPair:
    example: PreferenceExample
    chosen_id: int
    rejected_id: int
    pair_id: int


def snapshot_examples(*, snapshot: DatasetSnapshot, pair_ids: Sequence[int]) -> list[FrozenPair]:
    """The pairs as the snapshot froze them (its `responses`), in id order; a snapshot made
    before those were kept reads the pairs as they are now."""
    frozen = {int(k): v for k, v in (snapshot.responses or {}).items()}
    ids = sorted(pair_ids)
    if not all(pair_id in frozen for pair_id in ids):
        pairs = PreferencePair.objects.filter(pk__in=ids).order_by("id")
        frozen = {p.pk: [p.chosen_id, p.rejected_id, p.kind] for p in pairs}
        ids = [pair_id for pair_id in ids if pair_id in frozen]
    response_ids = {r for pair_id in ids for r in frozen[pair_id][:2]}
    responses = Response.objects.select_related("prompt").in_bulk(response_ids)
    return [
        FrozenPair(
            example=PreferenceExample(
                prompt=tuple(responses[chosen].prompt.messages),
                chosen=responses[chosen].text,
                rejected=responses[rejected].text,
                kind=kind,
            ),
            chosen_id=chosen,
            rejected_id=rejected,
            pair_id=pair_id,
        )
        for pair_id in ids
        for chosen, rejected, kind in [frozen[pair_id]]
    ]


class _DatabaseRefLogps:
    """A RefLogpStore over RefLogp rows, for the pairs of one run (by position)."""

    def __init__(self, pairs: Sequence[FrozenPair]) -> None:
        self.keys = [(p.chosen_id, p.rejected_id) for p in pairs]

    def get(self, key: str, count: int) -> list[tuple[float, float] | None]:
        rows = RefLogp.objects.filter(
            reference_key=key, chosen_id__in={c for c, _ in self.keys}
        ).values_list("chosen_id", "rejected_id", "chosen_logp", "rejected_logp")
        found = {(c, r): (cl, rl) for c, r, cl, rl in rows}
        return [found.get(pair) for pair in self.keys]

    def put(self, key: str, values: Mapping[int, tuple[float, float]]) -> None:
        RefLogp.objects.bulk_create(
            [
                RefLogp(
                    chosen_id=self.keys[i][0],
                    rejected_id=self.keys[i][1],
                    reference_key=key,
                    chosen_logp=cl,
                    rejected_logp=rl,
                )
                for i, (cl, rl) in sorted(values.items())
            ],
            ignore_conflicts=True,
        )


def training_run_execute(*, run_id: int) -> TrainingRun | None:
    """Run a queued training run to its end and register the new model version. A later
    attempt (its worker was lost) resumes from the run's newest complete checkpoint."""
    run = job_claim(TrainingRun, job_id=run_id)
    if run is None:
        return None
    try:
        with job_alive(run, every=settings.JOB_HEARTBEAT_SECONDS):
            _training_run(run)
    except JobLost:
        return run  # handed to another worker meanwhile: its results are that worker's
    except Exception as error:
        job_fail(run, error=error)
        raise
    return run


def _training_run(run: TrainingRun) -> None:
    project = run.project
    base_version = run.base_version
    training = TrainingSettings.from_mapping(run.config)
    frozen = snapshot_examples(snapshot=run.snapshot, pair_ids=run.snapshot.pair_ids)
    examples = [pair.example for pair in frozen]
    validation = [
        pair.example
        for pair in snapshot_examples(
            snapshot=run.snapshot, pair_ids=run.snapshot.validation_pair_ids
        )
    ]
    continues = run.start_from == StartFrom.PARENT and not base_version.is_base
    if run.reference == Reference.BASE:
        reference, reference_sha256 = "base", None
    elif run.reference == Reference.PARENT and not continues and not base_version.is_base:
        # A fresh adapter trained against the parent's policy.
        reference, reference_sha256 = base_version.adapter_path, base_version.adapter_sha256
    else:  # the parent's policy when training continues it; no reference for ORPO, SimPO
        reference, reference_sha256 = "start", None
    config = TrainingConfig(
        model=project.base_model,
        models_dir=str(settings.MODELS_DIR),
        output_dir=run.output_dir,
        init_adapter=base_version.adapter_path if continues else None,
        init_adapter_sha256=(base_version.adapter_sha256 or None) if continues else None,
        reference=reference,
        reference_sha256=reference_sha256 or None,
        checkpoint_steps=settings.TRAINING_CHECKPOINT_STEPS,
        trust_remote_code=project.trust_remote_code,
        quantize_4bit=settings.TRAINING_QUANTIZE_4BIT,
        **asdict(training),
    )
    if run.reference == Reference.NONE:
        reference_text = "none (the method uses no reference model)"
    elif reference == "base" or (reference == "start" and not continues):
        reference_text = "the base model"
    else:
        reference_text = f"{base_version.name} (its adapter, frozen)"
    job_log(
        run,
        f"training on {len(examples)} pairs from snapshot {run.snapshot.pk} "
        f"({run.snapshot.content_hash[:12]}); parent {base_version.name}; "
        + (
            f"continuing {base_version.name}'s adapter"
            if continues
            else "a fresh adapter on the base model"
        )
        + f"; reference: {reference_text}",
    )

    first_report = [True]

    def on_progress(progress: TrainingProgress) -> bool:
        if first_report:
            # This attempt's first step: one after the checkpoint it resumed from (after none,
            # step 1). The points of steps done again after that checkpoint go.
            first_report.clear()
            run.metrics = [p for p in run.metrics if p["step"] < progress.step]
            if progress.step > 1:
                job_log(
                    run,
                    f"attempt {run.attempts}: resumed from the checkpoint at step "
                    f"{progress.step - 1}",
                )
        point = {
            "step": progress.step,
            "epoch": round(progress.epoch, 3),
            "loss": progress.loss,
            "reward_accuracy": progress.reward_accuracy,
            "reward_margin": progress.reward_margin,
            "chosen_reward": progress.chosen_reward,
            "rejected_reward": progress.rejected_reward,
            "chosen_logp": progress.chosen_logp,
            "rejected_logp": progress.rejected_logp,
            "tokens_per_s": _rounded(progress.tokens_per_s, 1),
            "memory_mb": _rounded(progress.memory_mb, 1),
            "eta_s": _rounded(progress.eta_s, 1),
            "t": round(progress.elapsed_s, 2),
            "checkpoint": progress.checkpoint_step,
        }
        run.metrics.append(point)
        job_log(
            run,
            f"step {progress.step}/{progress.total_steps} loss={progress.loss} "
            f"acc={progress.reward_accuracy} margin={progress.reward_margin}",
        )
        alive = job_heartbeat(
            run,
            fields={
                "progress_done": progress.step,
                "progress_total": progress.total_steps,
                "metrics": run.metrics,
                "log_tail": run.log_tail,
            },
        )
        return not alive  # cancelled: stop after this step

    result = train(
        config,
        examples,
        validation=validation,
        ref_store=_DatabaseRefLogps(frozen),
        on_progress=on_progress,
    )
    for skipped in result.checkpoints_skipped:
        job_log(run, f"checkpoint passed over: {skipped}")
    if result.stopped_at_step is not None:
        job_log(run, f"cancelled: stopped after step {result.stopped_at_step}")
        job_stopped(
            run,
            summary={
                "steps": result.steps,
                "cancelled_at_step": result.stopped_at_step,
                "adapter_dir": result.adapter_dir,  # the last checkpoint, kept
                "adapter_sha256": result.adapter_sha256,
                "pairs": len(examples),
            },
        )
        return
    if result.reference_key is not None:
        job_log(
            run,
            f"reference log-probabilities: {result.ref_logps_reused} of {len(examples)} pairs "
            "reused from earlier runs"
            if result.ref_logps_reused
            else f"reference log-probabilities: computed for {len(examples)} pairs and stored",
        )
    figures = asdict(result.validation) if result.validation is not None else None
    contradictions = _contradictions_record(frozen, result.contradictions)
    job_log(
        run,
        f"{len(contradictions)} of {len(examples)} training pairs contradicted by the trained "
        "policy (listed on the run page)",
    )
    if figures is not None:
        job_log(
            run,
            f"validation ({figures['pairs']} held-out pairs): preference accuracy "
            f"{figures['accuracy_before']:.2f} before, {figures['accuracy_after']:.2f} after; "
            f"implicit reward accuracy {figures['reward_accuracy']:.2f}",
        )
    with transaction.atomic():
        version = model_version_register(
            project=project,
            parent=base_version,
            adapter_path=result.adapter_dir,
            adapter_sha256=result.adapter_sha256,
        )
        run.output_version = version
        run.save(update_fields=["output_version"])
        run.progress_done = result.steps
        job_log(run, f"registered {version.name} (parent {base_version.name})")
        job_succeed(
            run,
            summary={
                "steps": result.steps,
                "train_loss": result.train_loss,
                "elapsed_s": round(result.elapsed_s, 2),
                "seconds_per_step": round(result.elapsed_s / max(result.steps, 1), 2),
                "pairs": len(examples),
                "ref_logps_reused": result.ref_logps_reused,
                "memory_estimate_mb": result.memory_estimate_mb,
                "attempts": run.attempts,
                "resumed_from_step": result.resumed_from_step,
                "model_version": version.name,
                "validation": figures,
                "contradictions": contradictions,
            },
        )
