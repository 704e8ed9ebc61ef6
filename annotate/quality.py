"""Agreement, bias and per-annotator quality over a project's judgments.

Every figure carries the count it rests on, so a lead sees when a sample is too small to
mean much. Every figure can be restricted to one guideline version or one round, and the
report also splits agreement and bias by each of them.

Superseded judgments (undone, sent back) are left out; adjudications are a reviewer's
decision, not an annotation, and are left out too.

Model judges (members of kind "model") are measured apart, against the people: their answers
(votes, suggestions, fill-ins) never enter the people's figures. Each judge gets Krippendorff's
alpha with the people on the pairs both answered, Cohen's kappa against the people's majority,
its left and length bias measured as a person's, and its accuracy on gold items; a judge whose
kappa falls below the project's `judge_kappa_min` is flagged.

Rankings count as one judgment each; their pair figures (agreement, left/longer bias, ties,
gold, majority) are over the pairs they imply, where "left" is the response shown earlier.
Their own figures: Kendall's tau between annotators who ranked the same responses, and
between the order shown and the ranks given (0 without position bias; positive when the
responses shown first are ranked better).

Ratings (one response rated good or bad) are measured apart from the pairs: their own alpha
(nominal, good / bad) and agreement between two ratings of one response, and per annotator how
many they rated, how often good, their mean score on the 1-5 scale. Gold items, swapped
re-checks (a re-shown response rated again) and agreement with the others' majority count
ratings and pair votes alike.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

from django.contrib.auth.models import User
from django.db.models.functions import Length

from annotate.agreement import (
    Agreement,
    cohen_kappa,
    kappa_by_annotator_pair,
    kendall_tau_b,
    krippendorff_alpha_nominal,
)
from annotate.models import Choice, Judgment, JudgmentKind, Project
from annotate.ranking import ranking_pairs
from annotate.services.pairs import votes_decided


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def percent(self) -> float | None:
        return None if self.value is None else round(100 * self.value, 1)

    def __str__(self) -> str:
        return "—" if self.value is None else f"{self.value:.0%}"


@dataclass(frozen=True)
class QualityFilters:
    guideline_version: int | None = None
    round_number: int | None = None

    def as_query(self) -> dict[str, int]:
        query = {"guideline": self.guideline_version, "round": self.round_number}
        return {key: value for key, value in query.items() if value is not None}


@dataclass(frozen=True)
class _Row:
    judgment_id: int
    comparison_id: int
    annotator_id: int
    username: str
    kind: str
    choice: str
    left_was_a: bool
    criteria: dict[str, str]
    time_spent_ms: int | None
    guideline_version: int | None
    round_number: int
    gold_choice: str
    len_a: int
    len_b: int
    shown: list[int]  # a ranking's judgment: the order shown, and the ranks in that order
    ranks: list[int]
    score: int | None  # a rating's, on the 1-5 scale
    by_model: bool = False  # a model judge's

    @property
    def is_ranking(self) -> bool:
        return bool(self.shown)

    @property
    def is_rating(self) -> bool:
        return self.choice in (Choice.GOOD, Choice.BAD)

    @property
    def is_pair_vote(self) -> bool:
        """A vote on two responses: on a pair, or one a ranking implies."""
        return self.kind == JudgmentKind.IMPLIED or (
            self.kind == JudgmentKind.VOTE and not self.is_ranking and not self.is_rating
        )

    @property
    def is_rating_vote(self) -> bool:
        return self.kind == JudgmentKind.VOTE and self.is_rating

    @property
    def ranked(self) -> dict[int, int]:
        return dict(zip(self.shown, self.ranks, strict=False)) if self.ranks else {}

    @property
    def chose_left(self) -> bool | None:
        if self.choice not in (Choice.A, Choice.B):
            return None
        return (self.choice == Choice.A) == self.left_was_a

    @property
    def chose_longer(self) -> bool | None:
        if self.choice not in (Choice.A, Choice.B) or self.len_a == self.len_b:
            return None
        return (self.choice == Choice.A) == (self.len_a > self.len_b)


@dataclass(frozen=True)
class Mean:
    total: float
    n: int

    @property
    def value(self) -> float | None:
        return self.total / self.n if self.n else None

    def __str__(self) -> str:
        return "—" if self.value is None else f"{self.value:+.2f}"


@dataclass(frozen=True)
class Bias:
    """Biases and quality signals of a set of judgments (one annotator's, or everyone's)."""

    judgments: int
    left_chosen: Rate  # of left/right votes, how often the left side won
    chosen_longer: Rate  # of left/right votes between unequal lengths, how often the longer won
    ties: Rate
    both_bad: Rate
    median_seconds: float | None
    gold_correct: Rate  # gold items answered as their known answer
    consistent: Rate  # swapped re-checks answered as the first time
    with_majority: Rate  # votes that agree with the other annotators' majority
    rankings: int = 0  # of `judgments`, how many were rankings
    position_tau: Mean = Mean(0.0, 0)  # rankings: tau between the order shown and the ranks
    tau_with_others: Mean = Mean(0.0, 0)  # rankings: tau with others' rankings of the same
    ratings: int = 0  # of `judgments`, how many rated one response
    rated_good: Rate = Rate(0, 0)  # of the ratings (not gold), how many said good
    mean_score: Mean = Mean(0.0, 0)  # of the ratings on the 1-5 scale


@dataclass(frozen=True)
class AnnotatorQuality:
    annotator_id: int
    username: str
    bias: Bias


@dataclass(frozen=True)
class KappaRow:
    first: str
    second: str
    kappa: Agreement


@dataclass(frozen=True)
class GroupQuality:
    label: str
    value: int | None
    alpha: Agreement
    bias: Bias


@dataclass(frozen=True)
class JudgeQuality:
    """A model judge against the people."""

    annotator_id: int
    name: str
    answers: int  # votes, suggestions and fill-ins
    alpha_with_people: Agreement  # on the non-gold pairs both the judge and people answered
    kappa_with_majority: Agreement  # against the people's majority where they have one
    bias: Bias  # left, longer, ties, gold, with the people's majority: as for a person
    flagged: bool  # kappa below the project's judge_kappa_min


@dataclass(frozen=True)
class QualityReport:
    filters: QualityFilters
    judgments: int
    rankings: int  # of the judgments
    pairwise_agreement: Rate  # pairs of votes on one comparison that agree
    alpha: Agreement  # of the pair votes
    alpha_by_criterion: dict[str, Agreement]
    overall: Bias
    annotators: list[AnnotatorQuality]
    kappas: list[KappaRow]
    by_guideline: list[GroupQuality]
    by_round: list[GroupQuality]
    guideline_versions: list[int] = field(default_factory=list)
    round_numbers: list[int] = field(default_factory=list)
    judges: list[JudgeQuality] = field(default_factory=list)
    judge_kappa_min: float = 0.0
    ratings: int = 0  # of the judgments
    rating_alpha: Agreement = field(default_factory=lambda: Agreement(None, 0))  # good / bad
    rating_agreement: Rate = Rate(0, 0)  # pairs of ratings of one response that agree

    def chart_data(self) -> dict[str, Any]:
        """What the quality page draws, as plain JSON."""
        return {
            "annotators": [a.username for a in self.annotators],
            "left": [a.bias.left_chosen.percent for a in self.annotators],
            "longer": [a.bias.chosen_longer.percent for a in self.annotators],
            "gold": [a.bias.gold_correct.percent for a in self.annotators],
            "majority": [a.bias.with_majority.percent for a in self.annotators],
            "guidelines": [g.label for g in self.by_guideline],
            "guideline_alpha": [g.alpha.value for g in self.by_guideline],
            "guideline_left": [g.bias.left_chosen.percent for g in self.by_guideline],
            "rounds": [g.label for g in self.by_round],
            "round_alpha": [g.alpha.value for g in self.by_round],
            "round_left": [g.bias.left_chosen.percent for g in self.by_round],
        }


# A model judge's answers, measured as a person's votes are.
_MODEL_ANSWERS = (JudgmentKind.SUGGESTION, JudgmentKind.FILL)


def _rows(*, project: Project) -> list[_Row]:
    queryset = (
        Judgment.objects.filter(
            comparison__project=project,
            superseded_at__isnull=True,
            kind__in=[
                JudgmentKind.VOTE,
                JudgmentKind.RECHECK,
                JudgmentKind.IMPLIED,
                *_MODEL_ANSWERS,
            ],
        )
        .with_by_model()
        .annotate(
            len_a=Length("comparison__response_a__text"),
            len_b=Length("comparison__response_b__text"),
        )
        .values_list(
            "id",
            "comparison_id",
            "annotator_id",
            "annotator__username",
            "kind",
            "choice",
            "left_was_a",
            "criteria",
            "time_spent_ms",
            "guideline__version",
            "comparison__round_number",
            "comparison__gold_choice",
            "len_a",
            "len_b",
            "shown",
            "ranks",
            "score",
            "by_model",
        )
        .order_by("id")
    )
    rows = []
    for values in queryset:
        row = _Row(*values)
        if row.kind in _MODEL_ANSWERS:
            row = replace(row, kind=JudgmentKind.VOTE)
        rows.append(row)
    return rows


def _bias(
    rows: Sequence[_Row],
    *,
    votes_by_comparison: dict[int, list[_Row]],
    rankings_by_comparison: dict[int, list[_Row]],
) -> Bias:
    judged = [r for r in rows if r.kind == JudgmentKind.VOTE]
    votes = [r for r in rows if r.is_pair_vote]
    plain = [r for r in votes if not r.gold_choice]
    rated = [r for r in judged if r.is_rating]
    rated_plain = [r for r in rated if not r.gold_choice]
    scores = [r.score for r in rated if r.score is not None]
    lefts = [r.chose_left for r in plain if r.chose_left is not None]
    longers = [r.chose_longer for r in plain if r.chose_longer is not None]
    times = [r.time_spent_ms for r in judged if r.time_spent_ms is not None]
    gold = [r.choice == r.gold_choice for r in (*votes, *rated) if r.gold_choice]
    first_answer = {(r.comparison_id, r.annotator_id): r for r in judged}
    rechecks: list[bool] = []
    for r in rows:
        first = first_answer.get((r.comparison_id, r.annotator_id))
        if r.kind != JudgmentKind.RECHECK or first is None:
            continue
        rechecks += _same_answers(first, r)
    rankings = [r for r in judged if r.is_ranking and r.ranks and not r.gold_choice]
    position = [
        tau.value
        for r in rankings
        if (
            tau := kendall_tau_b(dict(enumerate(r.ranks)), {i: i for i in range(len(r.ranks))})
        ).value
        is not None
    ]
    with_others = [
        tau.value
        for r in rankings
        for other in rankings_by_comparison.get(r.comparison_id, [])
        if other is not r and (tau := kendall_tau_b(r.ranked, other.ranked)).value is not None
    ]
    with_majority = []
    for row in (*plain, *rated_plain):
        others = Counter(
            o.choice for o in votes_by_comparison.get(row.comparison_id, []) if o is not row
        )
        majority = votes_decided(others) if others else None
        if majority is not None:
            with_majority.append(row.choice == majority)
    return Bias(
        judgments=len(judged),
        left_chosen=Rate(sum(lefts), len(lefts)),
        chosen_longer=Rate(sum(longers), len(longers)),
        ties=Rate(sum(r.choice == Choice.TIE for r in plain), len(plain)),
        both_bad=Rate(sum(r.choice == Choice.BOTH_BAD for r in plain), len(plain)),
        median_seconds=statistics.median(times) / 1000 if times else None,
        gold_correct=Rate(sum(gold), len(gold)),
        consistent=Rate(sum(rechecks), len(rechecks)),
        with_majority=Rate(sum(with_majority), len(with_majority)),
        rankings=sum(1 for r in judged if r.is_ranking),
        position_tau=Mean(sum(position), len(position)),
        tau_with_others=Mean(sum(with_others), len(with_others)),
        ratings=len(rated),
        rated_good=Rate(sum(r.choice == Choice.GOOD for r in rated_plain), len(rated_plain)),
        mean_score=Mean(sum(scores), len(scores)),
    )


def _same_answers(first: _Row, again: _Row) -> list[bool]:
    """A swapped re-check against the first answer: one outcome for a pair, one per implied
    pair for a ranking (all bad answers every pair alike)."""
    if not first.is_ranking:
        return [again.choice == first.choice]
    if not first.ranks or not again.ranks:
        return [first.ranks == again.ranks] * (len(first.shown) * (len(first.shown) - 1) // 2)
    before = ranking_pairs(first.ranked, shown=sorted(first.shown))
    after = ranking_pairs(again.ranked, shown=sorted(first.shown))
    return [(b.chosen, b.tie) == (a.chosen, a.tie) for b, a in zip(before, after, strict=True)]


def _alpha(rows: Sequence[_Row], *, ratings: bool = False) -> Agreement:
    """Of the pair votes (with `ratings`: of the ratings' good / bad), on non-gold items."""
    units: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        if (row.is_rating_vote if ratings else row.is_pair_vote) and not row.gold_choice:
            units[row.comparison_id].append(row.choice)
    return krippendorff_alpha_nominal(units.values())


def _votes_by_comparison(rows: Sequence[_Row], *, of: str = "pairs") -> dict[int, list[_Row]]:
    """The votes of non-gold items, by comparison: `of` pairs (and the pairs rankings imply),
    rankings, or ratings."""
    grouped: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        wanted = (
            row.is_pair_vote
            if of == "pairs"
            else row.is_rating_vote
            if of == "ratings"
            else row.is_ranking and row.kind == JudgmentKind.VOTE
        )
        if not row.gold_choice and wanted:
            grouped[row.comparison_id].append(row)
    return grouped


def _agreeing(groups: dict[int, list[_Row]]) -> Rate:
    """Of every two votes on one comparison, how many agree."""
    agree = pairs = 0
    for group in groups.values():
        for first, second in combinations(group, 2):
            pairs += 1
            agree += first.choice == second.choice
    return Rate(agree, pairs)


def _groups(
    rows: Sequence[_Row],
    key: str,
    label: str,
    votes: dict[int, list[_Row]],
    rankings: dict[int, list[_Row]],
) -> list[GroupQuality]:
    grouped: dict[int | None, list[_Row]] = defaultdict(list)
    for row in rows:
        grouped[getattr(row, key)].append(row)
    return [
        GroupQuality(
            label=label.format(value if value is not None else "—"),
            value=value,
            alpha=_alpha(group),
            bias=_bias(group, votes_by_comparison=votes, rankings_by_comparison=rankings),
        )
        for value, group in sorted(grouped.items(), key=lambda item: (item[0] is None, item[0]))
    ]


def _judges(
    rows: Sequence[_Row],
    *,
    votes: dict[int, list[_Row]],
    rankings: dict[int, list[_Row]],
    kappa_min: float,
) -> list[JudgeQuality]:
    """Each model judge against the people (`votes`: the people's pair votes)."""
    by_judge: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        by_judge[row.annotator_id].append(row)
    majority = {
        comparison_id: top
        for comparison_id, group in votes.items()
        if (top := votes_decided(Counter(r.choice for r in group))) is not None
    }
    names = dict(User.objects.filter(pk__in=by_judge).values_list("pk", "first_name"))
    report = []
    for annotator_id, answers in by_judge.items():
        plain = [r for r in answers if r.is_pair_vote and not r.gold_choice]
        kappa = cohen_kappa(
            (r.choice, majority[r.comparison_id]) for r in plain if r.comparison_id in majority
        )
        report.append(
            JudgeQuality(
                annotator_id=annotator_id,
                name=names.get(annotator_id) or answers[0].username,
                answers=len(answers),
                alpha_with_people=krippendorff_alpha_nominal(
                    [r.choice, *(p.choice for p in votes[r.comparison_id])]
                    for r in plain
                    if r.comparison_id in votes
                ),
                kappa_with_majority=kappa,
                bias=_bias(answers, votes_by_comparison=votes, rankings_by_comparison=rankings),
                flagged=kappa.value is not None and kappa.value < kappa_min,
            )
        )
    return sorted(report, key=lambda j: j.name)


def project_quality(*, project: Project, filters: QualityFilters | None = None) -> QualityReport:
    filters = filters or QualityFilters()
    every = _rows(project=project)
    chosen = [
        r
        for r in every
        if (filters.guideline_version is None or r.guideline_version == filters.guideline_version)
        and (filters.round_number is None or r.round_number == filters.round_number)
    ]
    rows = [r for r in chosen if not r.by_model]
    votes = _votes_by_comparison(rows)
    rankings = _votes_by_comparison(rows, of="rankings")
    ratings = _votes_by_comparison(rows, of="ratings")
    # A vote's majority: the other votes on its comparison (a pair's or a rating's).
    answers = {**votes, **ratings}
    by_annotator: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        by_annotator[row.annotator_id].append(row)
    names = {r.annotator_id: r.username for r in rows}
    kappas = kappa_by_annotator_pair(
        (r.comparison_id, r.annotator_id, r.choice) for group in votes.values() for r in group
    )
    criteria_units: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for group in (*votes.values(), *rankings.values()):
        for row in group:
            for name, value in row.criteria.items():
                criteria_units[name][row.comparison_id].append(value)
    return QualityReport(
        filters=filters,
        judgments=sum(1 for r in rows if r.kind == JudgmentKind.VOTE),
        rankings=sum(1 for r in rows if r.kind == JudgmentKind.VOTE and r.is_ranking),
        pairwise_agreement=_agreeing(votes),
        alpha=_alpha(rows),
        alpha_by_criterion={
            name: krippendorff_alpha_nominal(criteria_units[name].values())
            for name in project.criteria
        },
        overall=_bias(rows, votes_by_comparison=answers, rankings_by_comparison=rankings),
        annotators=[
            AnnotatorQuality(
                annotator_id=annotator_id,
                username=names[annotator_id],
                bias=_bias(group, votes_by_comparison=answers, rankings_by_comparison=rankings),
            )
            for annotator_id, group in sorted(by_annotator.items(), key=lambda i: names[i[0]])
        ],
        kappas=[
            KappaRow(first=names[a], second=names[b], kappa=kappa)
            for (a, b), kappa in kappas.items()
        ],
        by_guideline=_groups(rows, "guideline_version", "Guidelines v{}", answers, rankings),
        by_round=_groups(rows, "round_number", "Round {}", answers, rankings),
        guideline_versions=sorted({r.guideline_version for r in every if r.guideline_version}),
        round_numbers=sorted({r.round_number for r in every}),
        judges=_judges(
            [r for r in chosen if r.by_model],
            votes=votes,
            rankings=rankings,
            kappa_min=project.judge_kappa_min,
        ),
        judge_kappa_min=project.judge_kappa_min,
        ratings=sum(1 for r in rows if r.is_rating_vote),
        rating_alpha=_alpha(rows, ratings=True),
        rating_agreement=_agreeing(ratings),
    )
