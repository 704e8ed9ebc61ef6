"""The training worker's body: claim the run, read its frozen snapshot, train with the engine,
register the new model version and record the outcome."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from alignment.engine.training import (
    Contradiction,
    PreferenceExample,
    TrainingConfig,
    TrainingProgress,
    TrainingResult,
    train,
)
from alignment.models import RefLogp, TrainingRun
from alignment.services.model_versions import model_version_register
from alignment.services.training import training_plan_effective
from alignment.services.training_settings import TrainingSettings
from annotate.models import DatasetSnapshot, PreferencePair, Response
from core.jobs import job_execute, job_heartbeat, job_log, job_stopped, job_succeed
from core.text import CUT_OFF


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


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
                # A response cut off at the token limit trains without the end of its turn.
                chosen_complete=responses[chosen].finish_reason != CUT_OFF,
                rejected_complete=responses[rejected].finish_reason != CUT_OFF,
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
    return job_execute(TrainingRun, job_id=run_id, body=_training_run)


def _training_run(run: TrainingRun) -> None:
    frozen = snapshot_examples(snapshot=run.snapshot, pair_ids=run.snapshot.pair_ids)
    examples = [pair.example for pair in frozen]
    validation = [
        pair.example
        for pair in snapshot_examples(
            snapshot=run.snapshot, pair_ids=run.snapshot.validation_pair_ids
        )
    ]
    config = _engine_config(run, examples)
    result = train(
        config,
        examples,
        validation=validation,
        ref_store=_DatabaseRefLogps(frozen),
        on_progress=_ProgressRecorder(run),
        on_phase=lambda phase: _phase_record(run, phase),
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
    _outcome_record(run, result, frozen)


def _engine_config(run: TrainingRun, examples: Sequence[PreferenceExample]) -> TrainingConfig:
    """The engine's config for the run: the lead's settings and plan, where training starts
    and what it is measured against; logged on the run."""
    base_version = run.base_version
    plan = training_plan_effective(run)
    job_log(
        run,
        f"training on {len(examples)} pairs from snapshot {run.snapshot.pk} "
        f"({run.snapshot.content_hash[:12]}); parent {base_version.name}; {plan.starts}; "
        f"reference: {plan.reference_text}",
    )
    continues, reference, reference_sha256 = plan.continues, plan.reference, plan.reference_sha256
    return TrainingConfig(
        model=run.project.base_model,
        models_dir=str(settings.MODELS_DIR),
        output_dir=run.output_dir,
        init_adapter=base_version.adapter_path if continues else None,
        init_adapter_sha256=(base_version.adapter_sha256 or None) if continues else None,
        reference=reference,
        reference_sha256=reference_sha256 or None,
        checkpoint_steps=settings.TRAINING_CHECKPOINT_STEPS,
        trust_remote_code=run.project.trust_remote_code,
        quantize_4bit=settings.TRAINING_QUANTIZE_4BIT,
        **asdict(TrainingSettings.from_mapping(run.config)),
    )


def _phase_record(run: TrainingRun, phase: str) -> None:
    """The phase the run is in, on its page at once (the log is saved with it)."""
    job_log(run, phase)
    run.summary = {**run.summary, "phase": phase}
    job_heartbeat(run, fields={"summary": run.summary, "log_tail": run.log_tail})


class _ProgressRecorder:
    """The engine's `on_progress`: each step's point on the run's metric series and log, with
    the heartbeat; answers True (stop after this step) once the run was cancelled."""

    def __init__(self, run: TrainingRun) -> None:
        self.run = run
        self.first = True

    def __call__(self, progress: TrainingProgress) -> bool:
        run = self.run
        if self.first:
            # This attempt's first step: one after the checkpoint it resumed from (after none,
            # step 1). The points of steps done again after that checkpoint go.
            self.first = False
            run.metrics = [p for p in run.metrics if p["step"] < progress.step]
            if progress.step > 1:
                job_log(
                    run,
                    f"attempt {run.attempts}: resumed from the checkpoint at step "
                    f"{progress.step - 1}",
                )
        run.metrics.append(
            {
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
        )
        left = f", about {progress.eta_s:.0f} s left" if progress.eta_s is not None else ""
        job_log(
            run,
            f"step {progress.step}/{progress.total_steps} loss={progress.loss} "
            f"acc={progress.reward_accuracy} margin={progress.reward_margin}{left}",
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


def _outcome_record(run: TrainingRun, result: TrainingResult, frozen: Sequence[FrozenPair]) -> None:
    """A finished run: its figures logged, the new model version registered and the run's
    success recorded, in one transaction."""
    if result.reference_key is not None:
        job_log(
            run,
            f"reference log-probabilities: {result.ref_logps_reused} of {len(frozen)} pairs "
            "reused from earlier runs"
            if result.ref_logps_reused
            else f"reference log-probabilities: computed for {len(frozen)} pairs and stored",
        )
    figures = asdict(result.validation) if result.validation is not None else None
    contradictions = _contradictions_record(frozen, result.contradictions)
    job_log(
        run,
        f"{len(contradictions)} of {len(frozen)} training pairs contradicted by the trained "
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
            project=run.project,
            parent=run.base_version,
            adapter_path=result.adapter_dir,
            adapter_sha256=result.adapter_sha256,
        )
        run.output_version = version
        run.save(update_fields=["output_version"])
        run.progress_done = result.steps
        job_log(run, f"registered {version.name} (parent {run.base_version.name})")
        job_succeed(
            run,
            summary={
                "steps": result.steps,
                "train_loss": result.train_loss,
                "elapsed_s": round(result.elapsed_s, 2),
                "seconds_per_step": round(result.elapsed_s / max(result.steps, 1), 2),
                "pairs": len(frozen),
                "ref_logps_reused": result.ref_logps_reused,
                "memory_estimate_mb": result.memory_estimate_mb,
                "phases": [[phase, seconds] for phase, seconds in result.phase_seconds],
                "attempts": run.attempts,
                "resumed_from_step": result.resumed_from_step,
                "model_version": version.name,
                "validation": figures,
                "contradictions": contradictions,
            },
        )
