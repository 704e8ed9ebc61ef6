"""Pair forming: a round's samples become comparisons (on-policy, selected from K, a
winner-stays ladder, head-to-head)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import transaction

from alignment.engine.selection import implicit_rewards, ladder_next, pair_select
from alignment.engine.sources import model_path_resolve
from alignment.models import PairingStrategy, PairSelection, Round
from annotate.models import (
    Comparison,
    ComparisonStatus,
    PairKind,
    PreferencePair,
    Purpose,
    Response,
)
from annotate.ranking import K_MAX, K_MIN
from annotate.services.comparisons import comparison_create
from annotate.services.rankings import ranking_create
from annotate.services.ratings import rating_create
from core.models import JobStatus
from core.text import CUT_OFF


def on_policy_pairs_create(
    responses: Sequence[Response],
    round_: Round,
    rng: random.Random,
    counts: dict[str, int],
) -> None:
    by_prompt: dict[int, list[Response]] = defaultdict(list)
    for response in responses:
        by_prompt[response.prompt_id].append(response)
    if round_.pair_selection == PairSelection.RANKING:
        _rankings_create(by_prompt, round_, counts)
        return
    if round_.pair_selection == PairSelection.RATING:
        _ratings_create(by_prompt, round_, counts)
        return
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


def _distinct_samples(group: list[Response]) -> list[Response]:
    """A prompt's samples with each text (spacing at the ends aside) once: its first sample
    of that text, in the order sampled."""
    return list({r.text.strip(): r for r in reversed(group)}.values())[::-1]


def _rankings_create(
    by_prompt: dict[int, list[Response]], round_: Round, counts: dict[str, int]
) -> None:
    """One ranking per prompt of its distinct samples (K_MIN to K_MAX of them); a prompt whose
    samples say only two different things gets a pair, one with fewer nothing."""
    for group in by_prompt.values():
        distinct = _distinct_samples(group)[:K_MAX]
        counts["identical_skipped"] += len(group) - len(distinct)
        if len(distinct) >= K_MIN:
            ranking_create(
                responses=distinct,
                round_number=round_.number,
                purpose=Purpose.TRAIN,
                pairing_strategy=PairingStrategy.ON_POLICY,
                selection={"strategy": PairSelection.RANKING, "k": len(group)},
            )
            counts["comparisons"] += 1
        elif len(distinct) == 2:
            first, second = distinct
            _on_policy_pair_create(first, second, round_, random.Random(), counts)


def _ratings_create(
    by_prompt: dict[int, list[Response]], round_: Round, counts: dict[str, int]
) -> None:
    """One rating per distinct sample of each prompt (a repeated text is rated once)."""
    for group in by_prompt.values():
        distinct = _distinct_samples(group)
        counts["identical_skipped"] += len(group) - len(distinct)
        for response in distinct:
            rating_create(
                response=response,
                round_number=round_.number,
                purpose=Purpose.TRAIN,
                pairing_strategy=PairingStrategy.ON_POLICY,
                selection={"strategy": PairSelection.RATING, "k": len(group)},
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
                items=[(r.prompt.messages, r.text, r.finish_reason != CUT_OFF) for r in flat],
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
            complete=[r.finish_reason != CUT_OFF for r in group],
        )
        selection: dict[str, Any] = {
            "strategy": strategy,
            "k": len(group),
            "picked": [chosen.first, chosen.second],
            "score": chosen.score,
        }
        if strategy == PairSelection.WINNER_STAYS:
            # The incumbent, who stays after a tie (ladder_step).
            selection["champion"] = group[chosen.first].pk
        if rewards:
            selection["rewards"] = [round(rewards[r.pk], 4) for r in group]
        if note:
            selection["fallback"] = {"asked": PairSelection.REWARD_GAP, "why": note}
        first, second = group[chosen.first], group[chosen.second]
        _on_policy_pair_create(first, second, round_, rng, counts, selection)


def ladder_step(
    sender: object, *, comparison: Comparison, pair: PreferencePair, **_: object
) -> Comparison | None:
    """winner_stays (annotate.signals.pair_decided): once a ladder's pair is decided, its
    winner (after a tie or both bad, the incumbent) meets the next sample of the prompt it has
    not met (engine.selection.ladder_next). Runs in the deciding judgment's transaction; one
    rung after a pair, however often the pair is decided."""
    if comparison.selection.get("strategy") != PairSelection.WINNER_STAYS:
        return None
    rungs = list(
        Comparison.objects.filter(
            project_id=comparison.project_id,
            prompt_id=comparison.prompt_id,
            round_number=comparison.round_number,
            purpose=Purpose.TRAIN,
        ).only("response_a_id", "response_b_id", "status", "selection")
    )
    if any(
        rung.selection.get("after") == comparison.pk
        or (rung.status == ComparisonStatus.OPEN and rung.pk != comparison.pk)
        for rung in rungs
    ):
        return None  # stepped already, or a rung is still being judged
    samples = list(
        Response.objects.filter(
            prompt_id=comparison.prompt_id,
            generation__job__round__project_id=comparison.project_id,
            generation__job__round__number=comparison.round_number,
            generation__job__purpose=Purpose.TRAIN,
        )
        .select_related("prompt")
        .order_by("id")
    )
    index = {response.pk: i for i, response in enumerate(samples)}
    champion = (
        pair.chosen_id
        if pair.kind == PairKind.PREFERENCE
        else comparison.selection.get("champion", comparison.response_a_id)
    )
    if champion not in index:
        return None
    met = {frozenset((index[r.response_a_id], index[r.pair_b_id])) for r in rungs}
    opponent = ladder_next(
        index[champion],
        [r.text for r in samples],
        met=met,
        shown={i for rung in met for i in rung},
        complete=[r.finish_reason != CUT_OFF for r in samples],
    )
    if opponent is None:
        return None
    return comparison_create(
        response_a=samples[index[champion]],
        response_b=samples[opponent],
        round_number=comparison.round_number,
        purpose=Purpose.TRAIN,
        pairing_strategy=PairingStrategy.ON_POLICY,
        rng=random.Random(comparison.pk),
        selection={
            "strategy": PairSelection.WINNER_STAYS,
            "k": len(samples),
            "picked": sorted((index[champion], opponent)),
            "score": 0.0,
            "champion": champion,
            "after": comparison.pk,
        },
    )


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
            Response.objects.filter(generation__job__in=job_ids)
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
