"""Agreement, bias and per-annotator quality over a project's judgments.

Every figure carries the count it rests on, so a lead sees when a sample is too small to
mean much. Every figure can be restricted to one guideline version or one round, and the
report also splits agreement and bias by each of them.

Superseded judgments (undone, sent back) are left out; adjudications are a reviewer's
decision, not an annotation, and are left out too.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from django.db.models.functions import Length

from annotate.agreement import (
    Agreement,
    kappa_by_annotator_pair,
    krippendorff_alpha_nominal,
)
from annotate.models import Choice, Judgment, JudgmentKind, Project


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
class QualityReport:
    filters: QualityFilters
    judgments: int
    pairwise_agreement: Rate  # pairs of votes on one comparison that agree
    alpha: Agreement
    alpha_by_criterion: dict[str, Agreement]
    overall: Bias
    annotators: list[AnnotatorQuality]
    kappas: list[KappaRow]
    by_guideline: list[GroupQuality]
    by_round: list[GroupQuality]
    guideline_versions: list[int] = field(default_factory=list)
    round_numbers: list[int] = field(default_factory=list)

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


def _rows(*, project: Project) -> list[_Row]:
    queryset = (
        Judgment.objects.filter(
            comparison__project=project,
            superseded_at__isnull=True,
            kind__in=[JudgmentKind.VOTE, JudgmentKind.RECHECK],
        )
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
        )
        .order_by("id")
    )
    return [_Row(*values) for values in queryset]


def _bias(rows: Sequence[_Row], *, votes_by_comparison: dict[int, list[_Row]]) -> Bias:
    votes = [r for r in rows if r.kind == JudgmentKind.VOTE]
    plain = [r for r in votes if not r.gold_choice]
    lefts = [r.chose_left for r in plain if r.chose_left is not None]
    longers = [r.chose_longer for r in plain if r.chose_longer is not None]
    times = [r.time_spent_ms for r in votes if r.time_spent_ms is not None]
    gold = [r.choice == r.gold_choice for r in votes if r.gold_choice]
    first_answer = {(r.comparison_id, r.annotator_id): r.choice for r in votes}
    rechecks = [
        r.choice == first_answer[(r.comparison_id, r.annotator_id)]
        for r in rows
        if r.kind == JudgmentKind.RECHECK and (r.comparison_id, r.annotator_id) in first_answer
    ]
    with_majority = []
    for row in plain:
        others = Counter(
            o.choice for o in votes_by_comparison.get(row.comparison_id, []) if o is not row
        ).most_common(2)
        if others and (len(others) == 1 or others[0][1] > others[1][1]):
            with_majority.append(row.choice == others[0][0])
    return Bias(
        judgments=len(votes),
        left_chosen=Rate(sum(lefts), len(lefts)),
        chosen_longer=Rate(sum(longers), len(longers)),
        ties=Rate(sum(r.choice == Choice.TIE for r in plain), len(plain)),
        both_bad=Rate(sum(r.choice == Choice.BOTH_BAD for r in plain), len(plain)),
        median_seconds=statistics.median(times) / 1000 if times else None,
        gold_correct=Rate(sum(gold), len(gold)),
        consistent=Rate(sum(rechecks), len(rechecks)),
        with_majority=Rate(sum(with_majority), len(with_majority)),
    )


def _alpha(rows: Sequence[_Row]) -> Agreement:
    units: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        if row.kind == JudgmentKind.VOTE and not row.gold_choice:
            units[row.comparison_id].append(row.choice)
    return krippendorff_alpha_nominal(units.values())


def _votes_by_comparison(rows: Sequence[_Row]) -> dict[int, list[_Row]]:
    grouped: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        if row.kind == JudgmentKind.VOTE and not row.gold_choice:
            grouped[row.comparison_id].append(row)
    return grouped


def _groups(
    rows: Sequence[_Row], key: str, label: str, votes: dict[int, list[_Row]]
) -> list[GroupQuality]:
    grouped: dict[int | None, list[_Row]] = defaultdict(list)
    for row in rows:
        grouped[getattr(row, key)].append(row)
    return [
        GroupQuality(
            label=label.format(value if value is not None else "—"),
            value=value,
            alpha=_alpha(group),
            bias=_bias(group, votes_by_comparison=votes),
        )
        for value, group in sorted(grouped.items(), key=lambda item: (item[0] is None, item[0]))
    ]


def project_quality(*, project: Project, filters: QualityFilters | None = None) -> QualityReport:
    filters = filters or QualityFilters()
    every = _rows(project=project)
    rows = [
        r
        for r in every
        if (filters.guideline_version is None or r.guideline_version == filters.guideline_version)
        and (filters.round_number is None or r.round_number == filters.round_number)
    ]
    votes = _votes_by_comparison(rows)
    agree = pairs = 0
    for group in votes.values():
        for first, second in combinations(group, 2):
            pairs += 1
            agree += first.choice == second.choice
    by_annotator: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        by_annotator[row.annotator_id].append(row)
    names = {r.annotator_id: r.username for r in rows}
    kappas = kappa_by_annotator_pair(
        (r.comparison_id, r.annotator_id, r.choice) for group in votes.values() for r in group
    )
    criteria_units: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for group in votes.values():
        for row in group:
            for name, value in row.criteria.items():
                criteria_units[name][row.comparison_id].append(value)
    return QualityReport(
        filters=filters,
        judgments=sum(1 for r in rows if r.kind == JudgmentKind.VOTE),
        pairwise_agreement=Rate(agree, pairs),
        alpha=_alpha(rows),
        alpha_by_criterion={
            name: krippendorff_alpha_nominal(criteria_units[name].values())
            for name in project.criteria
        },
        overall=_bias(rows, votes_by_comparison=votes),
        annotators=[
            AnnotatorQuality(
                annotator_id=annotator_id,
                username=names[annotator_id],
                bias=_bias(group, votes_by_comparison=votes),
            )
            for annotator_id, group in sorted(by_annotator.items(), key=lambda i: names[i[0]])
        ],
        kappas=[
            KappaRow(first=names[a], second=names[b], kappa=kappa)
            for (a, b), kappa in kappas.items()
        ],
        by_guideline=_groups(rows, "guideline_version", "Guidelines v{}", votes),
        by_round=_groups(rows, "round_number", "Round {}", votes),
        guideline_versions=sorted({r.guideline_version for r in every if r.guideline_version}),
        round_numbers=sorted({r.round_number for r in every}),
    )
