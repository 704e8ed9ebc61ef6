"""Agreement and bias figures over a project's judgments. Every rate comes with its count."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from annotate.models import Choice, Judgment, PairKind, PreferencePair, Project


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    def __str__(self) -> str:
        return "—" if self.value is None else f"{self.value:.0%}"


@dataclass(frozen=True)
class QualitySummary:
    judgments: int
    agreement: Rate  # pairs of judgments of one comparison that agree
    left_chosen: Rate  # of left/right judgments, how often the left side won
    chosen_longer: Rate  # of preference pairs, how often the chosen response is longer
    ties: Rate
    both_bad: Rate


def project_quality(*, project: Project) -> QualitySummary:
    rows = list(
        Judgment.objects.filter(comparison__project=project).values_list(
            "comparison_id", "choice", "left_was_a"
        )
    )
    by_comparison: dict[int, list[str]] = defaultdict(list)
    left_hits = decided = ties = both_bad = 0
    for comparison_id, choice, left_was_a in rows:
        by_comparison[comparison_id].append(choice)
        if choice in (Choice.A, Choice.B):
            decided += 1
            left_hits += (choice == Choice.A) == left_was_a
        elif choice == Choice.TIE:
            ties += 1
        else:
            both_bad += 1
    agree = pairs = 0
    for choices in by_comparison.values():
        for first, second in combinations(choices, 2):
            pairs += 1
            agree += first == second
    lengths = PreferencePair.objects.filter(project=project, kind=PairKind.PREFERENCE).values_list(
        "chosen__text", "rejected__text"
    )
    longer = total = 0
    for chosen, rejected in lengths:
        total += 1
        longer += len(chosen) > len(rejected)
    return QualitySummary(
        judgments=len(rows),
        agreement=Rate(agree, pairs),
        left_chosen=Rate(left_hits, decided),
        chosen_longer=Rate(longer, total),
        ties=Rate(ties, len(rows)),
        both_bad=Rate(both_bad, len(rows)),
    )
