"""Reads of the machine side, shaped for the lead's pages: rounds, jobs, runs, model versions."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from alignment.engine.drift import Drift, drift_of
from alignment.engine.stats import (
    Game,
    Rating,
    Verdict,
    bradley_terry,
    head_to_head_verdict,
    win_counts,
)
from alignment.models import GenerationJob, ModelVersion, Round, RoundSignOff, TrainingRun
from annotate.models import (
    Comparison,
    ComparisonStatus,
    DatasetSnapshot,
    PairKind,
    PreferencePair,
    Project,
    Purpose,
    Response,
    Split,
)
from annotate.quality import QualityFilters, QualityReport, project_quality
from annotate.services.snapshots import SnapshotFilters, snapshot_pairs

# Model versions -----------------------------------------------------------------------------


def model_versions_for_project(*, project: Project) -> QuerySet[ModelVersion]:
    """The project's versions, newest first."""
    return ModelVersion.objects.filter(project=project).select_related("parent").order_by("-id")


def model_version_newest(*, project: Project) -> ModelVersion | None:
    return model_versions_for_project(project=project).first()


@dataclass
class ModelVersionNode:
    version: ModelVersion
    lineage: list[ModelVersion]  # this version first, then its ancestors up to the root
    produced_by: TrainingRun | None
    depth: int = 0
    children: list[ModelVersionNode] = field(default_factory=list)

    @property
    def lineage_label(self) -> str:
        return " ← ".join(version.name for version in self.lineage)


@dataclass
class ModelVersionTree:
    roots: list[ModelVersionNode]
    nodes: list[ModelVersionNode]  # every version, depth first from the roots, parents first


def model_version_tree(*, project: Project) -> ModelVersionTree:
    """Every version of the project with its lineage, its training run and its children."""
    versions = list(
        ModelVersion.objects.filter(project=project).select_related("produced_by").order_by("id")
    )
    by_id = {version.pk: version for version in versions}
    nodes = {
        version.pk: ModelVersionNode(
            version=version,
            lineage=version.lineage(by_id),
            produced_by=getattr(version, "produced_by", None),
        )
        for version in versions
    }
    roots: list[ModelVersionNode] = []
    for version in versions:
        node = nodes[version.pk]
        parent = nodes.get(version.parent_id) if version.parent_id else None
        if parent is None:
            roots.append(node)
        else:
            parent.children.append(node)
    ordered: list[ModelVersionNode] = []
    stack = [(root, 0) for root in reversed(roots)]
    while stack:
        node, depth = stack.pop()
        node.depth = depth
        ordered.append(node)
        stack.extend((child, depth + 1) for child in reversed(node.children))
    return ModelVersionTree(roots=roots, nodes=ordered)


# Rounds and generation jobs -----------------------------------------------------------------


@dataclass
class RoundRow:
    round: Round
    prompt_count: int
    comparisons_created: int
    jobs: list[GenerationJob]


def round_list_for_project(*, project: Project) -> list[RoundRow]:
    """The project's rounds, newest first, with their prompt, comparison and job counts."""
    rounds = (
        Round.objects.filter(project=project)
        .select_related("policy")
        .annotate(prompt_count=Count("prompts", distinct=True))
        .prefetch_related("generation_jobs__model_version")
        .order_by("-number")
    )
    created = dict(
        Comparison.objects.filter(project=project)
        .values_list("round_number")
        .annotate(n=Count("id"))
        .values_list("round_number", "n")
    )
    return [
        RoundRow(
            round=round_,
            prompt_count=round_.prompt_count,
            comparisons_created=created.get(round_.number, 0),
            jobs=sorted(round_.generation_jobs.all(), key=lambda job: job.pk),
        )
        for round_ in rounds
    ]


@dataclass
class GenerationJobRow:
    job: GenerationJob
    tokens_per_s: float | None


@dataclass
class RoundComparisonCounts:
    created: int
    judged: int  # with at least one judgment
    complete: int  # with every judgment the project's overlap asks for
    judgments: int


@dataclass
class RoundDetail:
    round: Round
    train_prompt_count: int
    eval_prompt_count: int
    jobs: list[GenerationJobRow]
    comparisons: RoundComparisonCounts

    @property
    def any_active(self) -> bool:
        return any(row.job.is_active for row in self.jobs)


def round_detail_get(*, project: Project, number: int) -> RoundDetail | None:
    round_ = (
        Round.objects.filter(project=project, number=number)
        .select_related("policy__parent", "created_by")
        .first()
    )
    if round_ is None:
        return None
    splits = dict(
        round_.prompts.values_list("split").annotate(n=Count("id")).values_list("split", "n")
    )
    jobs = list(round_.generation_jobs.select_related("model_version").order_by("id"))
    return RoundDetail(
        round=round_,
        train_prompt_count=splits.get(Split.TRAIN, 0),
        eval_prompt_count=splits.get(Split.EVAL, 0),
        jobs=[GenerationJobRow(job=job, tokens_per_s=_tokens_per_s(job)) for job in jobs],
        comparisons=round_comparison_counts(project=project, round_number=number),
    )


def round_comparison_counts(*, project: Project, round_number: int) -> RoundComparisonCounts:
    counts = Comparison.objects.filter(project=project, round_number=round_number).aggregate(
        created=Count("id"),
        judged=Count("id", filter=Q(judgment_count__gt=0)),
        complete=Count("id", filter=Q(status=ComparisonStatus.COMPLETE)),
    )
    judgments = Comparison.objects.filter(project=project, round_number=round_number).aggregate(
        n=Count("judgments")
    )["n"]
    return RoundComparisonCounts(
        created=counts["created"] or 0,
        judged=counts["judged"] or 0,
        complete=counts["complete"] or 0,
        judgments=judgments or 0,
    )


def _tokens_per_s(job: GenerationJob) -> float | None:
    """The latest throughput: the last progress point while running, the summary when done."""
    if job.is_active:
        for point in reversed(job.metrics or []):
            if isinstance(point, dict) and point.get("tokens_per_s") is not None:
                return _float_or_none(point["tokens_per_s"])
    summary_value = (job.summary or {}).get("tokens_per_s")
    if summary_value is not None:
        return _float_or_none(summary_value)
    for point in reversed(job.metrics or []):
        if isinstance(point, dict) and point.get("tokens_per_s") is not None:
            return _float_or_none(point["tokens_per_s"])
    return None


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# Training runs ------------------------------------------------------------------------------


def preference_pairs_available_count(*, project: Project) -> int:
    """Pairs a snapshot with the default filters would take now.

    Mirrors `annotate.services.snapshots.snapshot_pairs` (preference kind, training purpose, train split).
    """
    return PreferencePair.objects.filter(
        project=project,
        kind=PairKind.PREFERENCE,
        comparison__purpose=Purpose.TRAIN,
        comparison__prompt__split=Split.TRAIN,
    ).count()


@dataclass
class TrainingRunRow:
    run: TrainingRun
    steps_done: int
    steps_total: int
    final_loss: float | None


def training_run_list_for_project(*, project: Project) -> list[TrainingRunRow]:
    runs = (
        TrainingRun.objects.filter(project=project)
        .select_related("base_version", "output_version", "snapshot")
        .order_by("-id")
    )
    return [
        TrainingRunRow(
            run=run,
            steps_done=int((run.summary or {}).get("steps") or run.progress_done),
            steps_total=run.progress_total,
            final_loss=_final_loss(run),
        )
        for run in runs
    ]


def access_training_run(*, project: Project, run_id: int) -> TrainingRun:
    """A run of a project the caller already passed `access_project` for; 404 otherwise."""
    run = training_run_get(project=project, run_id=run_id)
    if run is None:
        raise Http404("No such training run.")
    return run


def training_run_get(*, project: Project, run_id: int) -> TrainingRun | None:
    return (
        TrainingRun.objects.filter(project=project, pk=run_id)
        .select_related(
            "base_version",
            "output_version",
            "snapshot",
            "created_by",
            "sign_off__round",
            "sign_off__signed_off_by",
        )
        .first()
    )


POINT_KEYS = (
    "step",
    "epoch",
    "loss",
    "reward_accuracy",
    "reward_margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_logp",
    "rejected_logp",
    "tokens_per_s",
    "memory_mb",
    "eta_s",
    "t",
)


def training_run_points(*, run: TrainingRun) -> list[dict[str, Any]]:
    """The run's metric series as recorded by the worker, one point per logged step."""
    return [
        {key: point.get(key) for key in POINT_KEYS}
        for point in (run.metrics or [])
        if isinstance(point, dict)
    ]


@dataclass
class TrainingRunProgress:
    run: TrainingRun
    latest: dict[str, Any] | None
    elapsed_s: float | None
    heartbeat_age_s: float | None


def training_run_progress(
    *, run: TrainingRun, now: dt.datetime | None = None
) -> TrainingRunProgress:
    now = now or timezone.now()
    points = training_run_points(run=run)
    elapsed: float | None = None
    if run.started_at is not None:
        elapsed = ((run.finished_at or now) - run.started_at).total_seconds()
    heartbeat_age: float | None = None
    if run.heartbeat_at is not None and run.is_active:
        heartbeat_age = max(0.0, (now - run.heartbeat_at).total_seconds())
    return TrainingRunProgress(
        run=run,
        latest=points[-1] if points else None,
        elapsed_s=elapsed,
        heartbeat_age_s=heartbeat_age,
    )


@dataclass(frozen=True)
class ContradictionRow:
    comparison_id: int | None
    margin: float
    prompt: str
    chosen: str  # as the run was trained on it
    rejected: str
    open_again: bool  # sent back since: no preference pair from it now


def training_run_contradictions(*, run: TrainingRun) -> list[ContradictionRow]:
    """The training pairs the run's policy ranks against their human label, most
    disagreeing first, with the texts the run was trained on."""
    listed = (run.summary or {}).get("contradictions") or []
    frozen = {int(k): v for k, v in (run.snapshot.responses or {}).items()}
    response_ids = {r for c in listed for r in frozen.get(c["pair"], [])[:2]}
    responses = Response.objects.select_related("prompt").in_bulk(response_ids)
    paired_now = set(
        PreferencePair.objects.filter(
            comparison_id__in=[c["comparison"] for c in listed if c["comparison"]]
        ).values_list("comparison_id", flat=True)
    )
    rows = []
    for c in listed:
        chosen_id, rejected_id = (frozen.get(c["pair"]) or [None, None])[:2]
        chosen, rejected = responses.get(chosen_id), responses.get(rejected_id)
        prompt = chosen.prompt.messages[-1]["content"] if chosen is not None else ""
        rows.append(
            ContradictionRow(
                comparison_id=c["comparison"],
                margin=float(c["margin"]),
                prompt=prompt,
                chosen=chosen.text if chosen is not None else "",
                rejected=rejected.text if rejected is not None else "",
                open_again=c["comparison"] is not None and c["comparison"] not in paired_now,
            )
        )
    return rows


def _final_loss(run: TrainingRun) -> float | None:
    value = (run.summary or {}).get("train_loss")
    if value is not None:
        return _float_or_none(value)
    for point in reversed(run.metrics or []):
        if isinstance(point, dict) and point.get("loss") is not None:
            return _float_or_none(point["loss"])
    return None


# Head-to-head results -----------------------------------------------------------------------


@dataclass
class HeadToHead:
    """One round's blind head-to-head: its policy against its parent on held-out prompts."""

    round_number: int
    new: ModelVersion
    parent: ModelVersion
    verdict: Verdict


@dataclass
class LeaderboardRow:
    version: ModelVersion
    rating: Rating


@dataclass
class Leaderboard:
    rows: list[LeaderboardRow]
    head_to_heads: list[HeadToHead]  # newest round first
    games: int


def _head_to_head_games(*, project: Project) -> list[tuple[int, Game]]:
    """(round number, game between model versions) of every judged head-to-head comparison,
    by its aggregated outcome: the winner's point, or half each for a tie or both bad."""
    version_of = dict(ModelVersion.objects.filter(project=project).values_list("policy_id", "id"))
    pairs = PreferencePair.objects.filter(
        project=project, comparison__purpose=Purpose.EVAL
    ).values_list(
        "kind",
        "chosen_id",
        "comparison__round_number",
        "comparison__response_a_id",
        "comparison__response_a__policy_id",
        "comparison__response_b__policy_id",
    )
    games = []
    for kind, chosen_id, round_number, a_id, a_policy, b_policy in pairs.order_by("id"):
        first, second = version_of.get(a_policy), version_of.get(b_policy)
        if first is None or second is None or first == second:
            continue  # responses of no model version (imported), or a version against itself
        score = (1.0 if chosen_id == a_id else 0.0) if kind == PairKind.PREFERENCE else 0.5
        games.append((round_number, Game(first=first, second=second, score=score)))
    return games


def leaderboard_get(*, project: Project, bootstrap: int = 200) -> Leaderboard:
    """A Bradley-Terry rating of every model version from all head-to-heads (the base version
    anchored at 1000), and each round's verdict on its policy against its parent."""
    games = _head_to_head_games(project=project)
    versions = {v.pk: v for v in ModelVersion.objects.filter(project=project)}
    root = next(
        (v.pk for v in sorted(versions.values(), key=lambda v: v.pk) if v.parent_id is None), None
    )
    ratings = bradley_terry([g for _, g in games], anchor=root, bootstrap=bootstrap)
    return Leaderboard(
        rows=[LeaderboardRow(version=versions[r.player], rating=r) for r in ratings],
        head_to_heads=_round_verdicts(project=project, games=games),
        games=len(games),
    )


def _round_verdicts(*, project: Project, games: list[tuple[int, Game]]) -> list[HeadToHead]:
    """Each round's verdict on its policy against its parent, newest round first."""
    by_round: dict[int, list[Game]] = {}
    for round_number, game in games:
        by_round.setdefault(round_number, []).append(game)
    head_to_heads = []
    rounds = Round.objects.filter(project=project, number__in=by_round).select_related(
        "policy__parent"
    )
    for round_ in sorted(rounds, key=lambda r: -r.number):
        new, parent = round_.policy, round_.policy.parent
        if parent is None:
            continue
        wins, losses, ties = win_counts(by_round[round_.number], player=new.pk, opponent=parent.pk)
        head_to_heads.append(
            HeadToHead(
                round_number=round_.number,
                new=new,
                parent=parent,
                verdict=head_to_head_verdict(wins=wins, losses=losses, ties=ties),
            )
        )
    return head_to_heads


def round_head_to_head(*, project: Project, number: int) -> HeadToHead | None:
    """The verdict of one round's head-to-head, when it had one (no ratings are fitted)."""
    games = [(n, g) for n, g in _head_to_head_games(project=project) if n == number]
    return next(iter(_round_verdicts(project=project, games=games)), None)


@dataclass
class RoundDrift:
    round_number: int
    policy: ModelVersion
    drift: Drift


def round_drift(*, project: Project) -> list[RoundDrift]:
    """Per round, oldest first: how the round's own policy's responses read (length,
    refusals, repetition, truncation), so a drift across rounds shows early."""
    rows = []
    rounds = Round.objects.filter(project=project).select_related("policy").order_by("number")
    for round_ in rounds:
        responses = Response.objects.filter(
            policy_id=round_.policy.policy_id, generation__job__round=round_
        ).values_list("text", "finish_reason")
        texts = [text for text, _ in responses]
        drift = drift_of(texts, [reason for _, reason in responses])
        if drift is not None:
            rows.append(RoundDrift(round_number=round_.number, policy=round_.policy, drift=drift))
    return rows


# Round review -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotChanges:
    """The preference pairs a cumulative run would train on now, against the last snapshot:
    new ones (by round), ones gone (sent back, re-judged to a tie), and ones whose label
    turned round. Pairs are told apart by their two responses."""

    last: DatasetSnapshot | None
    now: int
    added: int
    removed: int
    flipped: int
    added_by_round: list[tuple[int, int]]


@dataclass(frozen=True)
class RoundReview:
    round: Round
    comparisons: RoundComparisonCounts
    pairs_by_kind: dict[str, int]
    quality: QualityReport
    coverage: dict[str, Any] | None  # the stored statistics of the round's prompts
    changes: SnapshotChanges
    sign_offs: list[RoundSignOff]

    def headline(self) -> dict[str, Any]:
        """What a sign-off records of the review."""
        q = self.quality
        return {
            "comparisons": self.comparisons.created,
            "complete": self.comparisons.complete,
            "pairs": self.pairs_by_kind,
            "judgments": q.judgments,
            "alpha": q.alpha.value,
            "alpha_n": q.alpha.n,
            "left_chosen": q.overall.left_chosen.value,
            "chosen_longer": q.overall.chosen_longer.value,
            "prompts_covered": (self.coverage or {}).get("prompts"),
            "added_since_snapshot": self.changes.added,
            "removed_since_snapshot": self.changes.removed,
            "flipped_since_snapshot": self.changes.flipped,
            "last_snapshot": self.changes.last.pk if self.changes.last else None,
        }


def round_review_get(*, project: Project, number: int) -> RoundReview | None:
    round_ = Round.objects.filter(project=project, number=number).select_related("policy").first()
    if round_ is None:
        return None
    kinds = dict(
        PreferencePair.objects.filter(project=project, comparison__round_number=number)
        .values_list("kind")
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    coverage = project.coverage.filter(scope=f"round:{number}").first()
    return RoundReview(
        round=round_,
        comparisons=round_comparison_counts(project=project, round_number=number),
        pairs_by_kind={str(k): n for k, n in sorted(kinds.items())},
        quality=project_quality(project=project, filters=QualityFilters(round_number=number)),
        coverage=coverage.data if coverage else None,
        changes=snapshot_changes(project=project),
        sign_offs=list(round_.sign_offs.select_related("signed_off_by")),
    )


def snapshot_changes(*, project: Project) -> SnapshotChanges:
    last = DatasetSnapshot.objects.filter(project=project).order_by("-id").first()
    current = snapshot_pairs(project=project, filters=SnapshotFilters())
    now = {(p.chosen_id, p.rejected_id): p.comparison.round_number for p in current}
    before: set[tuple[int, int]] = set()
    if last is not None:
        before = {(int(c), int(r)) for c, r, *_ in (last.responses or {}).values()}
    added = [key for key in now if key not in before and key[::-1] not in before]
    flipped = sum(1 for key in now if key not in before and key[::-1] in before)
    removed = sum(1 for key in before if key not in now and key[::-1] not in now)
    by_round = Counter(now[key] for key in added)
    return SnapshotChanges(
        last=last,
        now=len(now),
        added=len(added),
        removed=removed,
        flipped=flipped,
        added_by_round=sorted(by_round.items()),
    )
