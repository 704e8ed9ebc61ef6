"""The generation worker's body: claim the job, sample with the engine, store the responses and
form the pairs batch by batch, record the outcome."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.db import transaction

from alignment.engine.generation import (
    GenerationConfig,
    GenerationProgress,
    generate,
    messages_guided,
)
from alignment.engine.spec import SAMPLING_FIELDS, SamplingParameters
from alignment.engine.vllm_backend import generate_vllm
from alignment.models import GeneratedResponse, GenerationJob, PairSelection
from alignment.services.pairs import head_to_head_pairs_form, on_policy_pairs_create
from annotate.models import Prompt, Purpose, Response
from annotate.services.prompts import ResponseInput, responses_create
from core.jobs import JobLost, job_execute, job_heartbeat, job_log, job_succeed


def _generator() -> Any:
    """The generation backend this worker is configured with (settings.GENERATION_BACKEND)."""
    if settings.GENERATION_BACKEND == "vllm":
        return functools.partial(
            generate_vllm, server_url=settings.VLLM_URL, gpu_memory=settings.VLLM_GPU_MEMORY
        )
    return generate


def generation_job_execute(*, job_id: int) -> GenerationJob | None:
    """Run a queued generation job to its end; None when it was not queued (a redelivery).
    A later attempt (its worker was lost) generates only for the prompts not done yet."""
    return job_execute(GenerationJob, job_id=job_id, body=_generation_run)


def _generation_run(job: GenerationJob) -> None:
    version = job.model_version
    round_ = job.round
    every_prompt = list(job.prompts.order_by("id"))
    # Each batch's responses and comparisons are committed together: what an earlier attempt
    # committed is done.
    done = set(Response.objects.filter(generation__job=job).values_list("prompt_id", flat=True))
    prompts = [p for p in every_prompt if p.pk not in done]
    config = _engine_config(job)
    guidance = str(job.config.get("guidance", "")) if job.purpose == Purpose.TRAIN else ""
    job_log(
        job,
        f"generating {config.samples_per_prompt} sample(s) for {len(prompts)} prompts "
        f"with {version.name}"
        + (", half of them guided" if guidance else "")
        + (f" (attempt {job.attempts}: {len(done)} prompts done before)" if done else ""),
    )
    # A guided round samples each prompt twice over, half its samples each time: plain, then
    # with the guidance (same rows a pass: twice the prompts, half the samples each).
    variants = [(p, g) for p in prompts for g in ((False, True) if guidance else (False,))]
    if guidance:
        config = replace(
            config,
            samples_per_prompt=config.samples_per_prompt // 2,
            batch_size=config.batch_size * 2,
        )
    recorder = _SampleRecorder(
        job, variants, rng=random.Random(config.seed), done=len(done), total=len(every_prompt)
    )
    started = time.monotonic()
    samples = (
        _generator()(
            config,
            [messages_guided(p.messages, guidance) if g else p.messages for p, g in variants],
            on_progress=recorder,
        )
        if prompts
        else []
    )
    elapsed = time.monotonic() - started
    tokens = sum(s.completion_tokens for s in samples)
    if job.purpose == Purpose.TRAIN and recorder.pairs_at_the_end:
        ours = Response.objects.filter(generation__job=job).select_related("prompt")
        with transaction.atomic():
            on_policy_pairs_create(list(ours.order_by("id")), round_, recorder.rng, recorder.counts)
    job.progress_done = len(every_prompt)
    # The head-to-head pairs are formed in the transaction that records the last held-out job's
    # success: whoever sees both jobs succeeded sees their pairs too.
    with transaction.atomic():
        job_succeed(
            job,
            summary={
                **recorder.counts,
                "tokens_generated": tokens,
                "elapsed_s": round(elapsed, 2),
                "tokens_per_s": round(tokens / elapsed, 2) if elapsed else 0.0,
            },
        )
        if job.purpose == Purpose.EVAL:
            head_to_head_pairs_form(round_=round_)


def _engine_config(job: GenerationJob) -> GenerationConfig:
    """The engine's config: the round's sampling as the job recorded it (the spec's defaults
    for what it did not), the job's model version, a seed of the job's own."""
    cfg = job.config
    sampling = SamplingParameters(
        **{name: spec.parse(cfg[name]) for name, spec in SAMPLING_FIELDS.items() if name in cfg}
    )
    version = job.model_version
    return GenerationConfig(
        model=job.project.base_model,
        models_dir=str(settings.MODELS_DIR),
        adapter=version.adapter_path or None,
        adapter_sha256=version.adapter_sha256 or None,
        samples_per_prompt=int(cfg.get("samples_per_prompt", 2)),
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed + job.pk,
        batch_size=sampling.batch_size,
        trust_remote_code=job.project.trust_remote_code,
    )


class _SampleRecorder:
    """The engine's `on_progress`: each batch's samples stored as responses of the job (and,
    for training, formed into comparisons) in one transaction, then the job's progress and
    heartbeat; JobLost once the job is not this worker's any more."""

    def __init__(
        self,
        job: GenerationJob,
        variants: Sequence[tuple[Prompt, bool]],
        *,
        rng: random.Random,
        done: int,
        total: int,
    ) -> None:
        """`variants`: the engine's prompts, each a prompt and whether it is the guided one."""
        self.job, self.variants, self.rng, self.done, self.total = job, variants, rng, done, total
        self.per_prompt = 2 if any(guided for _, guided in variants) else 1
        self.counts = {"responses": 0, "comparisons": 0, "identical_skipped": 0}
        # The implicit reward needs every sample scored first: pairs are formed once all are in.
        self.pairs_at_the_end = job.round.pair_selection == PairSelection.REWARD_GAP
        cfg, version = job.config, job.model_version
        self.params = {k: cfg[k] for k in ("max_new_tokens", "temperature", "top_p") if k in cfg}
        self.params.update(
            model=job.project.base_model,
            adapter=version.adapter_path,
            model_version=version.name,
            round=job.round.number,
        )

    def __call__(self, progress: GenerationProgress) -> None:
        job = self.job
        half = int(self.job.config.get("samples_per_prompt", 2)) // 2
        rows = [
            ResponseInput(
                prompt_id=self.variants[s.prompt_index][0].pk,
                text=s.text,
                generation_params={
                    **self.params,
                    **(
                        {"sample_index": s.sample_index + half, "guided": True}
                        if self.variants[s.prompt_index][1]
                        else {"sample_index": s.sample_index}
                    ),
                },
                seed=s.seed,
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                finish_reason=s.finish_reason,
            )
            # A prompt's plain and guided samples in turns: adjacent pairs and the ladder's
            # first rung meet one of each.
            for s in sorted(
                progress.samples,
                key=lambda s: (s.prompt_index // self.per_prompt, s.sample_index, s.prompt_index),
            )
        ]
        with transaction.atomic():
            created = responses_create(policy=job.model_version.policy, rows=rows)
            GeneratedResponse.objects.bulk_create(
                [GeneratedResponse(response=response, job=job) for response in created]
            )
            self.counts["responses"] += len(created)
            if job.purpose == Purpose.TRAIN and not self.pairs_at_the_end:
                on_policy_pairs_create(created, job.round, self.rng, self.counts)
        tokens_per_s = progress.tokens_generated / progress.elapsed_s if progress.elapsed_s else 0.0
        done, todo = progress.done_prompts // self.per_prompt, len(self.variants) // self.per_prompt
        job.metrics.append(
            {
                "t": round(progress.elapsed_s, 2),
                "done": done,
                "tokens": progress.tokens_generated,
                "tokens_per_s": round(tokens_per_s, 2),
            }
        )
        left = progress.elapsed_s / done * (todo - done) if done else 0.0
        job_log(
            job,
            f"{self.done + done}/{self.total} prompts, "
            f"{progress.tokens_generated} tokens, {tokens_per_s:.1f} tokens/s, "
            f"about {left:.0f} s left",
        )
        alive = job_heartbeat(
            job,
            fields={
                "progress_done": self.done + done,
                "metrics": job.metrics,
                "log_tail": job.log_tail,
            },
        )
        if not alive:
            raise JobLost(f"{job} was cancelled or handed to another worker")
