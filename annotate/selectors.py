"""Reads of the human side, shaped for the pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, F, Q, QuerySet

from annotate.access import project_role, projects_for_user
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Guideline,
    ImportJob,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
    PairKind,
    PreferencePair,
    Project,
    Prompt,
    Response,
    Split,
)
from annotate.quality import QualityReport, project_quality
from annotate.queue import AVAILABLE_CAP, remaining_for_annotator
from annotate.ranking import wins_minus_losses
from annotate.services.judgments import side_from_choice
from annotate.sql import access as sql_access
from annotate.sql import judgments as sql_judgments


@dataclass(frozen=True)
class ProjectCard:
    project: Project
    role: str
    remaining: int  # counted up to AVAILABLE_CAP + 1

    @property
    def remaining_label(self) -> str:
        return remaining_label(self.remaining)


def remaining_label(remaining: int) -> str:
    """A count of available pairs as the pages show it: exact up to the cap, "50+" beyond."""
    return f"{AVAILABLE_CAP}+" if remaining > AVAILABLE_CAP else str(remaining)


def project_cards_for_user(*, user: User | AnonymousUser) -> list[ProjectCard]:
    cards = []
    for project in projects_for_user(user=user):
        role = project_role(user=user, project=project)
        assert isinstance(user, User)
        cards.append(
            ProjectCard(
                project=project,
                role=role.value if role else "",
                remaining=remaining_for_annotator(project=project, annotator=user),
            )
        )
    return cards


@dataclass(frozen=True)
class AnnotatorProgress:
    """Where an annotator stands in a project: what the pair page shows with every pair."""

    judged: int  # live votes
    remaining: int  # pairs they can be handed now (the held one included), up to the cap + 1
    quota: int | None
    guideline_version: int | None  # the project's current guidelines, None before any
    guideline_seen_version: int | None  # None when not a member (a site admin)

    @property
    def remaining_label(self) -> str:
        return remaining_label(self.remaining)


def annotator_progress(
    *, project: Project, annotator: User, remaining: int | None = None
) -> AnnotatorProgress:
    """`remaining`: the count of available pairs when the caller has it already (a claim
    counts them as it looks for one)."""
    judged, guideline_version, quota, seen = sql_access.annotator_counts(
        project_id=project.pk, annotator_id=annotator.pk
    )
    return AnnotatorProgress(
        judged=judged,
        remaining=(
            remaining
            if remaining is not None
            else remaining_for_annotator(project=project, annotator=annotator)
        ),
        quota=quota,
        guideline_version=guideline_version,
        guideline_seen_version=seen,
    )


@dataclass(frozen=True)
class ProjectOverview:
    prompts: int
    prompts_train: int
    prompts_eval: int
    comparisons: int
    comparisons_open: int
    comparisons_complete: int
    judgments: int
    pairs: int
    pairs_by_kind: dict[str, int]
    quality: QualityReport
    rounds: list[dict[str, Any]]


def project_overview(*, project: Project) -> ProjectOverview:
    prompts = Prompt.objects.filter(project=project).aggregate(
        total=Count("id"),
        train=Count("id", filter=Q(split=Split.TRAIN)),
        eval=Count("id", filter=Q(split=Split.EVAL)),
    )
    comparisons = (
        Comparison.objects.filter(project=project)
        .items()
        .aggregate(
            total=Count("id"),
            open=Count("id", filter=Q(status=ComparisonStatus.OPEN)),
            complete=Count("id", filter=Q(status=ComparisonStatus.COMPLETE)),
        )
    )
    kinds = dict(
        PreferencePair.objects.filter(project=project)
        .values_list("kind")
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    rounds = [
        dict(row)
        for row in Comparison.objects.filter(project=project)
        .items()
        .values("round_number", "purpose")
        .annotate(
            comparisons=Count("id"),
            complete=Count("id", filter=Q(status=ComparisonStatus.COMPLETE)),
        )
        .order_by("round_number", "purpose")
    ]
    return ProjectOverview(
        prompts=prompts["total"],
        prompts_train=prompts["train"],
        prompts_eval=prompts["eval"],
        comparisons=comparisons["total"],
        comparisons_open=comparisons["open"],
        comparisons_complete=comparisons["complete"],
        judgments=Judgment.objects.filter(
            comparison__project=project, kind=JudgmentKind.VOTE, superseded_at__isnull=True
        ).count(),
        pairs=sum(kinds.values()),
        pairs_by_kind={kind.label: kinds.get(kind.value, 0) for kind in PairKind},
        quality=project_quality(project=project),
        rounds=rounds,
    )


# Review ---------------------------------------------------------------------------------------

REVIEW_REASONS = {
    "split": "Split votes",
    "gold": "Gold misses",
    "annotator": "Low-agreement annotators",
    "sent_back": "Sent back",
    "adjudicated": "Adjudicated",
}
# An annotator whose votes agree with the others' majority less often than this, over at
# least LOW_AGREEMENT_MIN_VOTES votes, has their comparisons listed for review.
LOW_AGREEMENT = 0.6
LOW_AGREEMENT_MIN_VOTES = 5
REVIEW_LIST_LIMIT = 200


@dataclass(frozen=True)
class ReviewItem:
    comparison: Comparison
    votes: dict[str, int]
    agreement: float | None

    @property
    def undecided(self) -> bool:
        """Complete, with votes, and no pair: the votes split evenly."""
        return comparison_undecided(self.comparison, has_pair=self.agreement is not None)


def comparison_undecided(comparison: Comparison, *, has_pair: bool) -> bool:
    """Whether a comparison's votes are in but decided nothing (an even split)."""
    return (
        comparison.status == ComparisonStatus.COMPLETE
        and not comparison.is_gold
        and not comparison.is_ranking
        and comparison.judgment_count > 0
        and not has_pair
    )


def low_agreement_annotators(*, report: QualityReport) -> list[int]:
    return [
        a.annotator_id
        for a in report.annotators
        if a.bias.with_majority.n >= LOW_AGREEMENT_MIN_VOTES
        and (a.bias.with_majority.value or 0.0) < LOW_AGREEMENT
    ]


def _adjudicated() -> Any:
    """The ids of the comparisons a live adjudication decides."""
    return Judgment.objects.filter(
        kind=JudgmentKind.ADJUDICATION, superseded_at__isnull=True
    ).values("comparison_id")


def _disputed(*, project: Project) -> Any:
    """Complete comparisons not decided unanimously and not adjudicated: the undecided (an
    even split, no pair) and majorities that were not unanimous."""
    return (
        Comparison.objects.filter(project=project, status=ComparisonStatus.COMPLETE, gold_choice="")
        .with_outcome()
        .filter(Q(pair__isnull=True) | Q(pair__agreement__lt=1.0))
        .exclude(pk__in=_adjudicated())
        .select_related("prompt", "pair")
    )


def next_disputed(*, project: Project, after: Comparison) -> Comparison | None:
    """The comparison the split-votes list shows first, other than `after`: undecided ones
    first, newest first."""
    disputed: QuerySet[Comparison] = _disputed(project=project)
    return (
        disputed.exclude(pk=after.pk).order_by(F("pair__id").asc(nulls_first=True), "-id").first()
    )


def review_queue(*, project: Project, reason: str) -> list[ReviewItem]:
    """Comparisons a reviewer should look at, for one of REVIEW_REASONS."""
    adjudicated = _adjudicated()
    base = (
        Comparison.objects.filter(project=project).with_outcome().select_related("prompt", "pair")
    )
    if reason == "split":
        queryset = _disputed(project=project)
    elif reason == "gold":
        misses = Judgment.objects.filter(
            comparison__project=project,
            comparison__gold_choice__gt="",
            kind__in=[JudgmentKind.VOTE, JudgmentKind.IMPLIED],
            superseded_at__isnull=True,
        ).exclude(choice=F("comparison__gold_choice"))
        queryset = base.filter(pk__in=misses.values("comparison_id"))
    elif reason == "annotator":
        annotators = low_agreement_annotators(report=project_quality(project=project))
        queryset = base.filter(
            gold_choice="",
            judgments__annotator_id__in=annotators,
            judgments__superseded_at__isnull=True,
        ).exclude(pk__in=adjudicated)
    elif reason == "sent_back":
        queryset = base.filter(sent_back_count__gt=0)
    elif reason == "adjudicated":
        queryset = base.filter(pk__in=adjudicated)
    else:
        return []
    comparisons = list(queryset.distinct().order_by("-id")[:REVIEW_LIST_LIMIT])
    counts: dict[int, dict[str, int]] = {c.pk: {} for c in comparisons}
    for comparison_id, choice, n in (
        Judgment.objects.filter(comparison__in=comparisons, superseded_at__isnull=True)
        .filter(kind__in=[JudgmentKind.VOTE, JudgmentKind.IMPLIED])
        .values_list("comparison_id", "choice")
        .annotate(n=Count("id"))
        .values_list("comparison_id", "choice", "n")
    ):
        counts[comparison_id][Choice(choice).label] = n
    items = [
        ReviewItem(
            comparison=c,
            votes=counts[c.pk],
            agreement=getattr(getattr(c, "pair", None), "agreement", None),
        )
        for c in comparisons
    ]
    return sorted(items, key=lambda item: not item.undecided)  # undecided first, then newest


@dataclass(frozen=True)
class ComparisonReview:
    comparison: Comparison
    judgments: list[Judgment]
    pair: PreferencePair | None
    adjudication: Judgment | None

    @property
    def undecided(self) -> bool:
        return comparison_undecided(self.comparison, has_pair=self.pair is not None)


@dataclass(frozen=True)
class RankedResponse:
    response: Response
    score: int  # wins minus losses over its decided implied pairs
    gold_rank: int | None  # a gold ranking's known order (from its pairs' answers)


@dataclass(frozen=True)
class RankingVote:
    judgment: Judgment
    ranks: list[int | None]  # the rank it gave each response, in the ranking's order


@dataclass(frozen=True)
class RankingReview:
    """A ranking as a reviewer sees it: its responses in their stored order, each annotator's
    ranks of them, and the pairs it implies with what they aggregated to."""

    comparison: Comparison
    responses: list[RankedResponse]
    votes: list[RankingVote]
    implied: list[tuple[Comparison, PreferencePair | None]]


def ranking_review(*, comparison: Comparison) -> RankingReview:
    found = Response.objects.in_bulk(comparison.responses)
    implied = list(comparison.implied.select_related("pair").order_by("id"))
    pairs = [(c, getattr(c, "pair", None)) for c in implied]
    score = wins_minus_losses(
        comparison.responses,
        (
            (pair.chosen_id, pair.rejected_id)
            for _, pair in pairs
            if pair is not None and pair.kind == PairKind.PREFERENCE
        ),
    )
    # A gold ranking's known order, as its pairs' answers give it.
    gold = wins_minus_losses(
        comparison.responses,
        (
            (c.response_a_id, c.response_b_id)
            if c.gold_choice == Choice.A
            else (c.response_b_id, c.response_a_id)
            for c, _ in pairs
            if c.gold_choice in (Choice.A, Choice.B)
        ),
    )
    levels = sorted(set(gold.values()), reverse=True)
    responses = [
        RankedResponse(
            response=found[pk],
            score=score[pk],
            gold_rank=levels.index(gold[pk]) + 1 if comparison.is_gold else None,
        )
        for pk in comparison.responses
    ]
    votes = [
        RankingVote(
            judgment=j,
            ranks=[
                dict(zip(j.shown, j.ranks, strict=False)).get(pk) for pk in comparison.responses
            ],
        )
        for j in comparison.judgments.select_related("annotator", "guideline").order_by("id")
    ]
    return RankingReview(
        comparison=comparison,
        responses=responses,
        votes=votes,
        implied=pairs,
    )


def comparison_review(*, comparison: Comparison) -> ComparisonReview:
    judgments = list(
        Judgment.objects.filter(comparison=comparison)
        .with_by_model()
        .select_related("annotator", "guideline")
        .order_by("created_at", "id")
    )
    live_adjudications = [
        j for j in judgments if j.kind == JudgmentKind.ADJUDICATION and j.superseded_at is None
    ]
    return ComparisonReview(
        comparison=comparison,
        judgments=judgments,
        pair=PreferencePair.objects.filter(comparison=comparison).first(),
        adjudication=live_adjudications[-1] if live_adjudications else None,
    )


def judgments_of_annotator(
    *, project: Project, annotator: User, limit: int = 100
) -> list[Judgment]:
    """An annotator's own judgments, newest first: all they may see of anyone's judgments."""
    return list(
        Judgment.objects.filter(comparison__project=project, annotator=annotator)
        .exclude(kind__in=[JudgmentKind.ADJUDICATION, JudgmentKind.IMPLIED])
        .select_related("comparison__prompt", "guideline")
        .order_by("-created_at", "-id")[:limit]
    )


def skips_of_annotator(*, project: Project, annotator: User, limit: int = 100) -> list[Lease]:
    """An annotator's skips (their leases left as skipped), newest first."""
    return list(
        Lease.objects.filter(
            comparison__project=project, annotator=annotator, state=LeaseState.SKIPPED
        )
        .select_related("comparison__prompt")
        .order_by("-updated_at", "-id")[:limit]
    )


def judgment_of_annotator(*, project: Project, annotator: User, judgment_id: int) -> Judgment:
    """One of the annotator's own judgments (Judgment.DoesNotExist for anyone else's)."""
    return (
        Judgment.objects.filter(comparison__project=project, annotator=annotator)
        .exclude(kind__in=[JudgmentKind.ADJUDICATION, JudgmentKind.IMPLIED])
        .select_related("comparison__prompt", "comparison__response_a", "comparison__response_b")
        .select_related("guideline")
        .get(pk=judgment_id)
    )


def guidelines_of_project(*, project: Project) -> list[Guideline]:
    return list(project.guidelines.select_related("created_by").order_by("-version"))


def export_counts(*, project: Project) -> dict[str, int]:
    """Pairs by kind and by prompt split: what the export page offers."""
    rows = (
        PreferencePair.objects.filter(project=project)
        .values_list("kind", "comparison__prompt__split")
        .annotate(n=Count("id"))
        .values_list("kind", "comparison__prompt__split", "n")
    )
    counts: dict[str, int] = {}
    for kind, split, n in rows:
        counts[f"{kind}_{split}"] = counts.get(f"{kind}_{split}", 0) + n
        counts[kind] = counts.get(kind, 0) + n
    return counts


def import_jobs_recent(*, project: Project, limit: int = 5) -> list[ImportJob]:
    """The project's latest imports by a worker, newest first (the import page lists them)."""
    return list(ImportJob.objects.filter(project=project).order_by("-id")[:limit])


# The prompt browser ----------------------------------------------------------------------------

PROMPT_STATUSES = {
    "new": "Not compared yet",
    "open": "Being judged",
    "judged": "Judged",
}
PROMPTS_PER_PAGE = 50


@dataclass(frozen=True)
class PromptFilters:
    text: str = ""
    tag: str = ""
    split: str = ""
    language: str = ""
    cluster: int | None = None
    round_number: int | None = None
    status: str = ""


@dataclass(frozen=True)
class PromptFacets:
    """The values the browser's filters offer: those the project's prompts have."""

    tags: list[str]
    languages: list[str]
    clusters: list[int]
    rounds: list[int]


def prompt_facets(*, project: Project) -> PromptFacets:
    prompts = Prompt.objects.filter(project=project)
    tags = sorted({str(tag) for row in prompts.values_list("tags", flat=True) for tag in row})
    return PromptFacets(
        tags=tags,
        languages=sorted(set(prompts.exclude(language="").values_list("language", flat=True))),
        clusters=sorted(
            {c for c in prompts.values_list("cluster", flat=True).distinct() if c is not None}
        ),
        rounds=sorted(
            set(Comparison.objects.filter(project=project).values_list("round_number", flat=True))
        ),
    )


def prompts_browse(*, project: Project, filters: PromptFilters) -> Any:
    """The project's prompts that pass every filter, newest first, each with its number of
    comparisons (open ones too) and of live votes."""
    prompts = Prompt.objects.filter(project=project).defer("embedding")
    if filters.text:
        # The stored transcript holds the text as shown, the same in every database: its
        # text nodes escape &, < and > (quotes stay as they are).
        shown = filters.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        prompts = prompts.filter(html__icontains=shown)
    if filters.split:
        prompts = prompts.filter(split=filters.split)
    if filters.language:
        prompts = prompts.filter(language=filters.language)
    if filters.cluster is not None:
        prompts = prompts.filter(cluster=filters.cluster)
    if filters.round_number is not None:
        prompts = prompts.filter(
            pk__in=Comparison.objects.filter(
                project=project, round_number=filters.round_number
            ).values("prompt_id")
        )
    if filters.tag:
        # Tags are a JSON list: matched here, the same on SQLite and PostgreSQL.
        tagged = [pk for pk, tags in prompts.values_list("pk", "tags") if filters.tag in tags]
        prompts = prompts.filter(pk__in=tagged)
    prompts = prompts.annotate(
        n_comparisons=Count("comparisons", distinct=True),
        n_open=Count(
            "comparisons",
            filter=Q(comparisons__status=ComparisonStatus.OPEN),
            distinct=True,
        ),
        n_votes=Count(
            "comparisons__judgments",
            filter=Q(
                comparisons__judgments__kind=JudgmentKind.VOTE,
                comparisons__judgments__superseded_at__isnull=True,
            ),
            distinct=True,
        ),
    )
    if filters.status == "new":
        prompts = prompts.filter(n_comparisons=0)
    elif filters.status == "open":
        prompts = prompts.filter(n_open__gt=0)
    elif filters.status == "judged":
        prompts = prompts.filter(n_comparisons__gt=0, n_open=0)
    return prompts.order_by("-id")


@dataclass(frozen=True)
class PromptComparison:
    comparison: Comparison
    pair: PreferencePair | None
    judgments: list[Judgment]
    undecided: bool


@dataclass(frozen=True)
class PromptDetail:
    prompt: Prompt
    responses: list[Any]
    comparisons: list[PromptComparison]


def prompt_detail(*, prompt: Prompt) -> PromptDetail:
    """A prompt with every response to it and every comparison of them, with its judgments."""
    comparisons = list(
        Comparison.objects.filter(prompt=prompt)
        .with_outcome()
        .select_related("response_a__policy", "response_b__policy")
        .order_by("round_number", "id")
    )
    pairs = {p.comparison_id: p for p in PreferencePair.objects.filter(comparison__in=comparisons)}
    judgments: dict[int, list[Judgment]] = {c.pk: [] for c in comparisons}
    for judgment in (
        Judgment.objects.filter(comparison__in=comparisons)
        .select_related("annotator")
        .order_by("created_at", "id")
    ):
        judgments[judgment.comparison_id].append(judgment)
    return PromptDetail(
        prompt=prompt,
        responses=list(prompt.responses.select_related("policy").order_by("id")),
        comparisons=[
            PromptComparison(
                comparison=c,
                pair=pairs.get(c.pk),
                judgments=judgments[c.pk],
                undecided=comparison_undecided(c, has_pair=c.pk in pairs),
            )
            for c in comparisons
        ],
    )


@dataclass(frozen=True)
class Suggestion:
    """A model judge's answer to a pair, in the sides one annotator saw."""

    judge: str
    side: str  # left / right / tie / both_bad
    agrees: bool  # with that annotator's vote

    @property
    def words(self) -> str:
        return _SIDE_WORDS[self.side]


_SIDE_WORDS = {"left": "left", "right": "right", "tie": "a tie", "both_bad": "both bad"}


def suggestions_after_vote(*, judgment: Judgment) -> list[Suggestion]:
    """What the model judges suggested on the pair just judged, for the annotator who judged
    it: shown only after their vote, never before (it would anchor them). Read only where the
    submit found some (`Judgment.suggested`): the judging hot path pays nothing otherwise."""
    if not judgment.suggested or judgment.shown:
        return []
    if judgment.kind not in (JudgmentKind.VOTE, JudgmentKind.RECHECK):
        return []
    return [
        Suggestion(
            judge=name,
            side=side_from_choice(left_is_a=judgment.left_was_a, choice=choice),
            agrees=choice == judgment.choice,
        )
        for name, choice in sql_judgments.suggestions(comparison_id=judgment.comparison_id)
    ]
