"""The headless loop check: one full round with simulated annotators, end to end.

Round 1 samples the base policy on training prompts; simulated annotators judge the pairs by
a rule through the same queue and judgment service people use (or a model judge votes on them,
as a worker runs it, `--judge`); a QLoRA DPO run trains on the
aggregated pairs; a head-to-head round then samples the new checkpoint and its parent on
held-out prompts, and the same rule judges them blind. The report says whether the new
policy learned the rule: its win rate over the parent with a 95 % interval, and the rule's
measured property for both policies.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone

from alignment.engine.memory import peak_rss_mb, peak_rss_reset, rss_mb
from alignment.engine.rules import JudgeRule, ranks_by_rule, rate_by_rule
from alignment.engine.stats import WinRate, win_rate
from alignment.models import (
    DataScope,
    GenerationJob,
    JudgeMode,
    ModelVersion,
    PairingStrategy,
    PairSelection,
    Round,
    TrainingRun,
)
from alignment.selectors.leaderboard import round_head_to_head
from alignment.services.judges import judge_add, judge_run_start
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import SamplingSettings, round_start
from alignment.services.training import TrainingPlan, training_run_start
from alignment.services.training_settings import TrainingSettings
from alignment.workers.generation import generation_job_execute
from alignment.workers.judging import judge_job_execute
from alignment.workers.training import training_run_execute
from annotate.demo_data import demo_guidelines, demo_prompts
from annotate.models import (
    Comparison,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
    PairKind,
    PreferencePair,
    Project,
    Response,
    Role,
)
from annotate.queue import assignment_next, comparison_skip
from annotate.services.judgments import judgment_submit
from annotate.services.projects import membership_set, project_create
from annotate.services.prompts import prompts_create
from core.models import JobStatus
from core.text import CUT_OFF

Log = Callable[[str], None]


@dataclass(frozen=True)
class LoopCheckSettings:
    model: str = "packaged:smollm2-135m-instruct"
    # 32 prompts x 4 samples, a winner-stays ladder over each prompt's 4 and half of them
    # guided by the rule's description: the same generation as 64 x 2 adjacent pairs, with
    # more informative pairs for rules that tie most pairs (docs/benchmarks.md, issue 17).
    train_prompts: int = 32
    # At least 48 held-out prompts, two samples of each policy per prompt: the interval
    # counts the games of one prompt at their effective number (engine.stats.effective_games).
    eval_prompts: int = 48
    samples_per_prompt: int = 4
    eval_samples_per_prompt: int = 2
    annotators: int = 2
    pair_selection: str = PairSelection.WINNER_STAYS
    # Half of each training prompt's samples guided by the rule's description (its round's
    # guidance, as a lead would write the guidelines' gist).
    guided: bool = True
    # Annotators skip a training pair whose two responses were both cut off at the token
    # limit: neither answer is complete, and the pair would teach token choice, not length.
    skip_both_truncated: bool = True
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    # A model judge votes on the training pairs instead of the simulated annotators (the rule
    # still judges the head-to-head: it is what the check measures).
    judge: ModelJudgeSettings | None = None


@dataclass(frozen=True)
class ModelJudgeSettings:
    """A model judge for the loop check (alignment.models.Judge's fields)."""

    kind: str  # rule, llm or local
    rule: str = ""
    base_url: str = ""
    model_name: str = ""
    api_key_env: str = ""
    requests_per_minute: int = 600

    @property
    def name(self) -> str:
        what = {"rule": self.rule, "llm": self.model_name, "local": "packaged model"}[self.kind]
        return f"{self.kind} judge ({what})"


@dataclass(frozen=True)
class PolicyFigures:
    name: str
    responses: int
    property_mean: float
    mean_completion_tokens: float


@dataclass(frozen=True)
class LoopCheckReport:
    project_slug: str
    rule: str
    property_name: str
    train_comparisons: int
    train_judgments: int
    train_pairs: int
    train_ties: int
    # The simulated annotators' time on round 1 under the reading model (READING_CHARS_PER_S).
    train_reading_minutes: float
    train_skipped: int
    training_steps: int
    train_loss: float
    new_policy: PolicyFigures
    parent_policy: PolicyFigures
    head_to_head: WinRate
    seconds: dict[str, float]
    generation_tokens_per_s: float
    training_seconds_per_step: float
    peak_rss_mb: float
    peak_rss_mb_by_phase: dict[str, float]
    # With a model judge: its pass's summary, and how often its votes matched the rule's.
    judge: dict[str, Any] | None = None
    # With --pair-selection rating: the round's decided ratings, good and bad.
    train_rated_good: int = 0
    train_rated_bad: int = 0


def simulated_annotators_ensure(*, project: Project, count: int) -> list[User]:
    users = []
    for index in range(1, count + 1):
        user, created = User.objects.get_or_create(username=f"simulated-{project.slug}-{index}")
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        membership_set(project=project, user=user, role=Role.ANNOTATOR)
        users.append(user)
    return users


# The reading model of the annotators' time: reading time proportional to the characters shown
# (the prompt and every response), at about 250 words a minute.
READING_CHARS_PER_S = 25.0


@dataclass(frozen=True)
class JudgingWork:
    """What simulated annotators did: judgments made and the characters they were shown."""

    judgments: int
    chars_read: int

    @property
    def reading_minutes(self) -> float:
        return self.chars_read / READING_CHARS_PER_S / 60


def judge_by_rule(
    *,
    project: Project,
    annotators: Sequence[User],
    rule: JudgeRule,
    skip_both_truncated: bool = False,
) -> JudgingWork:
    """Let simulated annotators work the queue until nothing is left: a pair by the rule's
    verdict, a ranking by the rule's ranks (engine.rules.ranks_by_rule), a rating by the rule's
    verdicts against the other rated answers to its prompt in its round (rate_by_rule)."""
    made = chars = 0
    idle = 0
    turn = 0
    while idle < len(annotators):
        annotator = annotators[turn % len(annotators)]
        turn += 1
        assignment = assignment_next(project=project, annotator=annotator)
        if assignment is None:
            idle += 1
            continue
        idle = 0
        comparison = assignment.comparison
        # The rule sees what a person sees: the prompt and the texts in the order shown.
        shown = list(assignment.shown) or [
            r for r in (assignment.left, assignment.right) if r is not None
        ]
        # Responses that all stop mid-sentence have nothing to tell apart; one unfinished
        # response rated on its own is rated (it is trained without its end of turn).
        if (
            skip_both_truncated
            and len(shown) > 1
            and all(r.finish_reason == CUT_OFF for r in shown)
        ):
            comparison_skip(
                comparison=comparison,
                annotator=annotator,
                reason=(
                    "every response cut off at the token limit"
                    if assignment.shown
                    else "both responses cut off at the token limit"
                ),
            )
            continue
        prompt = comparison.prompt.text
        chars += len(prompt) + sum(len(r.text) for r in shown)
        if assignment.shown:
            answer: dict[str, Any] = {"ranks": ranks_by_rule(rule, prompt, [r.text for r in shown])}
        elif assignment.rated is not None:
            others = (
                Comparison.objects.filter(
                    prompt_id=comparison.prompt_id, round_number=comparison.round_number
                )
                .ratings()
                .exclude(pk=comparison.pk)
                .values_list("response_a__text", flat=True)
            )
            good = rate_by_rule(rule, prompt, assignment.rated.text, list(others))
            answer = {"side": "good" if good else "bad"}
        else:
            verdict = rule.judge(prompt, shown[0].text, shown[1].text)
            answer = {"side": {"a": "left", "b": "right", "tie": "tie"}[verdict]}
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, time_spent_ms=0, **answer)
        made += 1
    return JudgingWork(judgments=made, chars_read=chars)


def judge_by_model(
    *, project: Project, judge: ModelJudgeSettings, rule: JudgeRule
) -> dict[str, Any]:
    """A model judge votes on the queue as a worker would run it (alignment.workers.judging):
    its pass's summary, and the share of its votes that the rule would have given."""
    added = judge_add(
        project=project,
        name=judge.name,
        kind=judge.kind,
        mode=JudgeMode.VOTE,
        rule=judge.rule,
        base_url=judge.base_url,
        model_name=judge.model_name,
        api_key_env=judge.api_key_env,
        requests_per_minute=judge.requests_per_minute,
    )
    job = judge_run_start(judge=added, dispatch=False)
    judge_job_execute(job_id=job.pk)
    job.refresh_from_db()
    if job.status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"judge job {job.pk} {job.status}: {job.error}")
    votes = Judgment.objects.filter(
        annotator=added.user, kind=JudgmentKind.VOTE, superseded_at__isnull=True
    ).select_related("comparison__prompt", "comparison__response_a", "comparison__response_b")
    matched = [
        rule.judge(v.comparison.prompt.text, v.comparison.response_a.text, v.comparison.pair_b.text)
        == v.choice
        for v in votes
    ]
    return {
        **job.summary,
        "agreement_with_rule": sum(matched) / len(matched) if matched else 0.0,
    }


def _jobs_execute(jobs: Sequence[GenerationJob]) -> None:
    for job in jobs:
        generation_job_execute(job_id=job.pk)
        job.refresh_from_db()
        if job.status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"generation job {job.pk} {job.status}: {job.error}")


def _policy_figures(
    version: ModelVersion, responses: Sequence[Response], rule: JudgeRule
) -> PolicyFigures:
    return PolicyFigures(
        name=version.name,
        responses=len(responses),
        property_mean=mean(rule.measure(r.text) for r in responses) if responses else float("nan"),
        mean_completion_tokens=mean(r.completion_tokens or 0 for r in responses)
        if responses
        else float("nan"),
    )


class _JobLines(logging.Handler):
    """The jobs' log lines (core.jobs logs each one) as they come, under the phase's name."""

    def __init__(self, log: Log) -> None:
        super().__init__(logging.INFO)
        self.log = log
        self.phase = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.log(f"  [{self.phase}] {record.getMessage()}")


@contextlib.contextmanager
def _progress_shown(log: Log) -> Iterator[_JobLines]:
    handler = _JobLines(log)
    logger = logging.getLogger("core.jobs")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def loop_check_run(*, settings: LoopCheckSettings, rule: JudgeRule, log: Log) -> LoopCheckReport:
    """One round of the loop for `rule`, with each phase's progress logged as it goes."""
    with _progress_shown(log) as progress:
        return _loop_check(settings=settings, rule=rule, log=log, phases=_Phases(progress))


class _Phases:
    """Each phase's wall time and peak memory, and its name on the progress lines."""

    def __init__(self, progress: _JobLines) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self.started = time.monotonic()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.progress.phase = name
        at_start = rss_mb()
        peak_rss_reset()
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)
            self.peak_mb[name] = peak_rss_mb()
            self.progress.log(
                f"  [{name}] done in {self.seconds[name]:.0f} s; peak RSS "
                f"{self.peak_mb[name]:.0f} MB ({at_start:.0f} MB at its start)"
            )

    def totals(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.monotonic() - self.started, 1)}


def _loop_check(
    *, settings: LoopCheckSettings, rule: JudgeRule, log: Log, phases: _Phases
) -> LoopCheckReport:
    project = _project_make(settings, rule)
    slug = project.slug
    annotators = simulated_annotators_ensure(project=project, count=settings.annotators)
    base = model_version_base_ensure(project=project)
    train_prompts = list(
        project.prompts.filter(split="train").order_by("id")[: settings.train_prompts]
    )
    eval_prompts = list(
        project.prompts.filter(split="eval").order_by("id")[: settings.eval_prompts]
    )
    sampling = settings.sampling.validate()
    log(
        f"project {slug}: {len(train_prompts)} training prompts, {len(eval_prompts)} held-out prompts"
    )
    if settings.guided:
        log(
            f"guidance for half the samples: {rule.description!r}"
            if rule.description
            else f"rule {rule.name} has no description (a docstring): no guided samples"
        )

    with phases("round 1 generation"):
        round1 = round_start(
            project=project,
            policy=base,
            train_prompts=train_prompts,
            samples_per_prompt=settings.samples_per_prompt,
            sampling=sampling,
            pair_selection=settings.pair_selection,
            guidance=rule.description if settings.guided else "",
            dispatch=False,
        )
        round1_jobs = list(round1.generation_jobs.all())
        _jobs_execute(round1_jobs)
    log(
        f"round 1: {Comparison.objects.filter(project=project).items().count()} comparisons "
        f"in {phases.seconds['round 1 generation']:.0f} s"
    )

    judge_figures = None
    with phases("judging"):
        if settings.judge is not None:
            judge_figures = judge_by_model(project=project, judge=settings.judge, rule=rule)
            work = JudgingWork(judgments=int(judge_figures["answered"]), chars_read=0)
        else:
            work = judge_by_rule(
                project=project,
                annotators=annotators,
                rule=rule,
                skip_both_truncated=settings.skip_both_truncated,
            )
    if judge_figures is not None:
        log(
            f"{settings.judge.name if settings.judge else ''}: {judge_figures['answered']} votes, "
            f"{judge_figures['uncertain']} uncertain, {judge_figures['failed']} without an "
            f"answer; the rule's verdict on {judge_figures['agreement_with_rule']:.0%} of them, "
            f"{judge_figures['seconds_per_pair']:.2f} s a pair"
        )
    pairs = PreferencePair.objects.filter(project=project)
    train_pairs = pairs.filter(kind=PairKind.PREFERENCE).count()
    train_ties = pairs.filter(kind__in=[PairKind.TIE, PairKind.BOTH_BAD]).count()
    rated = {str(kind): pairs.filter(kind=kind).count() for kind in (PairKind.GOOD, PairKind.BAD)}
    log(
        f"judged {work.judgments}: {train_pairs} preference pairs, {train_ties} ties"
        + (f", {rated['good']} rated good, {rated['bad']} rated bad" if any(rated.values()) else "")
        + (
            ""
            if judge_figures is not None
            else f"; {work.reading_minutes:.1f} annotator minutes reading "
            f"({work.chars_read} characters)"
        )
    )

    with phases("training"):
        run = _train(project=project, base=base, settings=settings)
    new = run.output_version
    assert new is not None
    log(
        f"trained {run.summary['steps']} steps in {phases.seconds['training']:.0f} s "
        f"(loss {run.summary['train_loss']:.3f}) → {new.name}"
    )
    log(
        "  training by phase: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in run.summary.get("phases", []))
    )

    with phases("head-to-head generation"):
        round2 = round_start(
            project=project,
            policy=new,
            eval_prompts=eval_prompts,
            samples_per_prompt=settings.eval_samples_per_prompt,
            sampling=sampling,
            strategy=PairingStrategy.HEAD_TO_HEAD,
            dispatch=False,
        )
        _jobs_execute(list(round2.generation_jobs.order_by("id")))
    with phases("head-to-head judging"):
        judged = judge_by_rule(project=project, annotators=annotators, rule=rule).judgments
    log(
        f"head to head: {judged} comparisons judged in {phases.seconds['head-to-head judging']:.0f} s"
    )

    return _report(
        project=project,
        rule=rule,
        rounds=(round1, round2),
        run=run,
        counts=(work.judgments, train_pairs, train_ties, rated["good"], rated["bad"]),
        reading_minutes=work.reading_minutes,
        phases=phases,
        generation_tokens_per_s=float(round1_jobs[0].summary["tokens_per_s"]),
        judge=judge_figures,
    )


def _train(*, project: Project, base: ModelVersion, settings: LoopCheckSettings) -> TrainingRun:
    """A run on the round's pairs, executed here as a worker would; it must succeed."""
    run = training_run_start(
        project=project,
        base_version=base,
        training=settings.training,
        plan=TrainingPlan(data_scope=DataScope.ROUND),
        dispatch=False,
    )
    training_run_execute(run_id=run.pk)
    run = TrainingRun.objects.select_related("output_version").get(pk=run.pk)
    if run.status != JobStatus.SUCCEEDED or run.output_version is None:
        raise RuntimeError(f"training run {run.pk} {run.status}: {run.error}")
    return run


def _project_make(settings: LoopCheckSettings, rule: JudgeRule) -> Project:
    """A fresh project of the demo's prompts and guidelines, one judgment per comparison."""
    project = project_create(
        name=f"Loop check ({rule.name})",
        slug="loop-check-" + timezone.now().strftime("%Y%m%d-%H%M%S"),
        guidelines=demo_guidelines(),
        base_model=settings.model,
        overlap=1,
    )
    prompts_create(project=project, rows=demo_prompts())
    return project


def _report(
    *,
    project: Project,
    rule: JudgeRule,
    rounds: tuple[Round, Round],
    run: TrainingRun,
    counts: tuple[int, int, int, int, int],  # judgments, pairs, ties, rated good, rated bad
    reading_minutes: float,
    phases: _Phases,
    generation_tokens_per_s: float,
    judge: dict[str, Any] | None = None,
) -> LoopCheckReport:
    """The figures of a finished check: the head-to-head counted as the round's page counts
    it (the new version against its parent), each policy's responses under the rule."""
    round1, round2 = rounds
    new, base = run.output_version, run.base_version
    assert new is not None
    train_judgments, train_pairs, train_ties, rated_good, rated_bad = counts
    h2h = round_head_to_head(project=project, number=round2.number)
    eval_responses = Response.objects.filter(generation__job__round=round2)
    return LoopCheckReport(
        project_slug=project.slug,
        rule=rule.name,
        property_name=rule.property_name,
        train_comparisons=Comparison.objects.filter(project=project, round_number=round1.number)
        .items()
        .count(),
        train_judgments=train_judgments,
        train_pairs=train_pairs,
        train_ties=train_ties,
        train_reading_minutes=round(reading_minutes, 2),
        train_skipped=Lease.objects.filter(comparison__project=project, state=LeaseState.SKIPPED)
        .values("comparison")
        .distinct()
        .count(),
        training_steps=int(run.summary["steps"]),
        train_loss=float(run.summary["train_loss"]),
        new_policy=_policy_figures(new, list(eval_responses.filter(policy=new.policy)), rule),
        parent_policy=_policy_figures(base, list(eval_responses.filter(policy=base.policy)), rule),
        head_to_head=h2h.verdict.win_rate if h2h else win_rate(wins=0, losses=0, ties=0),
        seconds=phases.totals(),
        generation_tokens_per_s=generation_tokens_per_s,
        training_seconds_per_step=float(run.summary["seconds_per_step"]),
        # The peak of this process (it did a worker's jobs): the highest phase's.
        peak_rss_mb=max(phases.peak_mb.values()),
        peak_rss_mb_by_phase=phases.peak_mb,
        judge=judge,
        train_rated_good=rated_good,
        train_rated_bad=rated_bad,
    )
