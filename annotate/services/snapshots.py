"""Dataset snapshots: the frozen set of pairs a training run uses, with its validation split\nand content hash."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User

from annotate.models import DatasetSnapshot, PairKind, PreferencePair, Project, Purpose, Split
from annotate.services.model_judgments import model_judge_counts
from core.errors import ValidationFailed


@dataclass(frozen=True)
class SnapshotFilters:
    rounds: tuple[int, ...] = ()  # empty: every round
    min_agreement: float = 0.0
    # Pair kinds taken: preferences only, unless the method trains on ties and both-bad (KTO).
    kinds: tuple[str, ...] = (PairKind.PREFERENCE,)
    # The share of preference pairs held out for validation (none below VALIDATION_MIN_PAIRS).
    validation_share: float = 0.1

    def as_json(self) -> dict[str, Any]:
        return {
            "rounds": list(self.rounds),
            "min_agreement": self.min_agreement,
            "kinds": [str(kind) for kind in self.kinds],
            "validation_share": self.validation_share,
            "purpose": Purpose.TRAIN,
            "split": Split.TRAIN,
        }


def snapshot_pairs(*, project: Project, filters: SnapshotFilters) -> list[PreferencePair]:
    pairs = PreferencePair.objects.filter(
        project=project,
        kind__in=filters.kinds,
        agreement__gte=filters.min_agreement,
        comparison__purpose=Purpose.TRAIN,
        comparison__prompt__split=Split.TRAIN,  # held-out prompts never reach training
    ).select_related("comparison__prompt", "chosen", "rejected")
    if filters.rounds:
        pairs = pairs.filter(comparison__round_number__in=filters.rounds)
    return list(pairs.order_by("id"))


VALIDATION_MIN_PAIRS = 10


def snapshot_validation_split(
    pairs: Sequence[PreferencePair], share: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training, validation): the preference pairs of about `share` of the prompts held out,
    when there are VALIDATION_MIN_PAIRS preference pairs. By prompt, so no held-out pair's
    sibling (another pair of its prompt) is trained on: every pair of a held-out prompt leaves
    training. The choice hangs on the prompt ids alone, so the same pairs give the same split
    (and snapshot hash) every time."""
    if not 0 <= share < 1:
        raise ValidationFailed("The validation share must be at least 0 and below 1.")
    preferences = [p for p in pairs if p.kind == PairKind.PREFERENCE]
    per_prompt = Counter(p.comparison.prompt_id for p in preferences)
    if share == 0 or len(preferences) < VALIDATION_MIN_PAIRS or len(per_prompt) < 2:
        return list(pairs), []
    wanted = max(1, round(share * len(preferences)))
    ranked = sorted(per_prompt, key=lambda i: hashlib.sha256(f"prompt:{i}".encode()).digest())
    held: set[int] = set()
    count = 0
    # Whole prompts, until the share is reached; never every prompt.
    for prompt_id in ranked[:-1]:
        if count >= wanted:
            break
        held.add(prompt_id)
        count += per_prompt[prompt_id]
    return (
        [p for p in pairs if p.comparison.prompt_id not in held],
        [p for p in preferences if p.comparison.prompt_id in held],
    )


def snapshot_content_hash(
    pairs: Sequence[PreferencePair], validation: Sequence[PreferencePair] = ()
) -> str:
    digest = hashlib.sha256()
    held = {pair.pk for pair in validation}
    for pair in sorted([*pairs, *validation], key=lambda p: p.pk):
        row = [pair.pk, pair.comparison.prompt.messages, pair.chosen.text, pair.rejected.text]
        if pair.kind != PairKind.PREFERENCE:  # preference-only snapshots keep their old hashes
            row.append(pair.kind)
        if pair.pk in held:
            row.append("validation")
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def snapshot_create(
    *, project: Project, filters: SnapshotFilters, created_by: User | None = None
) -> DatasetSnapshot:
    pairs = snapshot_pairs(project=project, filters=filters)
    if not pairs:
        rated = (
            PairKind.GOOD not in filters.kinds
            and (
                PreferencePair.objects.filter(
                    project=project, kind__in=[PairKind.GOOD, PairKind.BAD]
                )
            ).exists()
        )
        raise ValidationFailed(
            "No preference pairs match these filters yet: "
            + (
                "this project's ratings train with KTO only (choose the kto method)."
                if rated
                else "judge some comparisons first."
            )
        )
    training, validation = snapshot_validation_split(pairs, filters.validation_share)
    return DatasetSnapshot.objects.create(
        project=project,
        pair_ids=[pair.pk for pair in training],
        validation_pair_ids=[pair.pk for pair in validation],
        responses={
            str(pair.pk): [pair.chosen_id, pair.rejected_id, pair.kind]
            for pair in [*training, *validation]
        },
        filters=filters.as_json(),
        model_judges=model_judge_counts(comparison_ids=[p.comparison_id for p in pairs]),
        content_hash=snapshot_content_hash(training, validation),
        n_pairs=len(training),
        created_by=created_by,
    )
