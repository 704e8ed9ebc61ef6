"""A round samples K > 2 responses per prompt and shows the two its pair selection picks,
recorded on the comparison."""

from __future__ import annotations

import itertools

import pytest
from django.contrib.auth.models import User

from alignment.engine.rules import BUILTIN_RULES
from alignment.loop import judge_by_rule
from alignment.models import GenerationJob
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.pairs import ladder_step
from alignment.services.rounds import round_prompts_choose, round_start
from alignment.workers.generation import generation_job_execute
from annotate.models import Comparison, PreferencePair, Project, Response
from core.errors import ValidationFailed
from tests.factories import client_make, generation_job_make, judgments_make, training_run_make

pytestmark = pytest.mark.django_db


def _round(project: Project, policy, selection: str) -> GenerationJob:
    return generation_job_make(
        project, policy=policy, prompts=3, samples_per_prompt=4, pair_selection=selection
    )


def test_it_shows_one_chosen_pair_of_k_samples_per_prompt(
    tiny_project: Project, annotator: User, lead: User
) -> None:
    base = model_version_base_ensure(project=tiny_project)
    job = _round(tiny_project, base, "most_different")
    generation_job_execute(job_id=job.pk)
    comparisons = list(Comparison.objects.filter(project=tiny_project, round_number=1))
    assert Response.objects.filter(prompt__project=tiny_project).count() == 12  # 3 x K=4
    assert len(comparisons) == 3  # one per prompt, not K/2
    for c in comparisons:
        assert c.selection["strategy"] == "most_different" and c.selection["k"] == 4
        first, second = c.selection["picked"]
        assert 0 <= first < second < 4 and c.selection["score"] > 0
    client = client_make(lead)
    review = client.get(f"/p/{tiny_project.slug}/review/{comparisons[0].pk}/").content.decode()
    assert "of 4 by most_different" in review

    # The base has no implicit reward of its own: it says so and falls back.
    generation_job_execute(job_id=_round(tiny_project, base, "reward_gap").pk)
    fallback = Comparison.objects.filter(round_number=2).first()
    assert fallback is not None and fallback.selection["fallback"]["asked"] == "reward_gap"

    # A trained version: the pair is the one its implicit reward tells furthest apart.
    judgments_make(tiny_project, annotator)
    run = training_run_make(
        tiny_project, base_version=base, execute=True, epochs=1, batch_size=2, max_length=96
    )
    child = run.output_version
    assert child is not None
    generation_job_execute(job_id=_round(tiny_project, child, "reward_gap").pk)
    picked = list(Comparison.objects.filter(round_number=3))
    assert len(picked) == 3
    for c in picked:
        rewards = c.selection["rewards"]
        first, second = c.selection["picked"]
        assert len(rewards) == 4 and "fallback" not in c.selection
        assert abs(rewards[first] - rewards[second]) == pytest.approx(
            max(abs(a - b) for a in rewards for b in rewards), abs=1e-3
        )


def test_it_needs_more_than_two_samples_to_choose_from(tiny_project: Project) -> None:
    with pytest.raises(ValidationFailed, match="at least 3 samples per prompt"):
        round_start(
            project=tiny_project,
            policy=model_version_base_ensure(project=tiny_project),
            train_prompts=round_prompts_choose(project=tiny_project, count=2),
            samples_per_prompt=2,
            pair_selection="random",
            dispatch=False,
        )


def test_winner_stays_the_winner_meets_each_sample_it_has_not_met(
    tiny_project: Project, annotator: User
) -> None:
    base = model_version_base_ensure(project=tiny_project)
    job = _round(tiny_project, base, "winner_stays")
    generation_job_execute(job_id=job.pk)
    # The tiny model runs to its token limit; as complete answers every sample may meet.
    Response.objects.filter(prompt__project=tiny_project).update(finish_reason="stop")
    first = list(Comparison.objects.filter(project=tiny_project, round_number=1))
    assert len(first) == 3 and {tuple(c.selection["picked"]) for c in first} == {(0, 1)}

    # Judged through the queue like people: the longer answer wins, equal lengths tie.
    judge_by_rule(project=tiny_project, annotators=[annotator], rule=BUILTIN_RULES["longer"])

    for prompt_id in {c.prompt_id for c in first}:
        rungs = list(
            Comparison.objects.filter(project=tiny_project, prompt_id=prompt_id).order_by("id")
        )
        samples = list(Response.objects.filter(prompt_id=prompt_id).order_by("id"))
        met = [frozenset((c.response_a_id, c.response_b_id)) for c in rungs]
        assert len(met) == len(set(met)), "no two samples meet twice"
        assert 3 <= len(rungs) <= 6  # K - 1 to K(K-1)/2 pairs of the K = 4 samples
        for before, rung in itertools.pairwise(rungs):
            pair = PreferencePair.objects.get(comparison=before)
            # Each rung follows the one before: its winner, or after a tie its incumbent.
            stays = pair.chosen_id if pair.kind == "preference" else before.selection["champion"]
            assert rung.selection["after"] == before.pk
            assert rung.selection["champion"] == stays == rung.response_a_id
        # The ladder ends with the longest answer having met every other sample.
        longest = max(len(s.text) for s in samples)
        last = PreferencePair.objects.get(comparison=rungs[-1])
        champion = last.chosen_id if last.kind == "preference" else rungs[-1].selection["champion"]
        assert len(Response.objects.get(pk=champion).text) == longest
        assert {s.pk for s in samples} - {champion} <= {
            other for pair in met if champion in pair for other in pair
        }
        # Decided again (an adjudication, an undo and a new vote): no second rung.
        assert ladder_step(Comparison, comparison=rungs[-1], pair=last) is None
        assert (
            ladder_step(
                Comparison,
                comparison=rungs[0],
                pair=PreferencePair.objects.get(comparison=rungs[0]),
            )
            is None
        )


def test_a_guided_round_samples_half_of_each_prompts_samples_with_the_guidance(
    tiny_project: Project,
) -> None:
    guidance = "Prefer the response that ends by asking the user a question."
    job = generation_job_make(
        tiny_project,
        prompts=3,
        samples_per_prompt=4,
        pair_selection="winner_stays",
        guidance=guidance,
    )
    generation_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.progress_done == job.progress_total == 3
    assert job.round.guidance == guidance
    for prompt_id in set(job.prompts.values_list("id", flat=True)):
        samples = list(Response.objects.filter(prompt_id=prompt_id).order_by("id"))
        guided = [r.generation_params.get("guided", False) for r in samples]
        # K = 4: two plain, two guided, in turns; sample indices 0-1 plain, 2-3 guided.
        assert guided == [False, True, False, True]
        assert sorted(r.generation_params["sample_index"] for r in samples) == [0, 1, 2, 3]
        plain, steered = samples[0], samples[1]
        # The guided prompt carries the guidance: more prompt tokens, same stored prompt.
        assert steered.prompt_tokens > plain.prompt_tokens
        assert steered.prompt_id == plain.prompt_id
        rung = Comparison.objects.get(prompt_id=prompt_id)
        # The ladder's first rung meets a plain sample and a guided one.
        assert {rung.response_a_id, rung.response_b_id} == {plain.pk, steered.pk}


def test_guidance_needs_an_even_k_and_on_policy_pairs(tiny_project: Project) -> None:
    base = model_version_base_ensure(project=tiny_project)
    prompts = round_prompts_choose(project=tiny_project, count=2)
    with pytest.raises(ValidationFailed, match="even number of samples per prompt"):
        round_start(
            project=tiny_project,
            policy=base,
            train_prompts=prompts,
            samples_per_prompt=3,
            guidance="Be brief.",
            dispatch=False,
        )
    with pytest.raises(ValidationFailed, match="at most 2000 characters"):
        round_start(
            project=tiny_project,
            policy=base,
            train_prompts=prompts,
            samples_per_prompt=2,
            guidance="x" * 2001,
            dispatch=False,
        )
    assert not tiny_project.rounds.exists()


def test_a_ranking_round_ranks_each_prompts_samples_and_simulated_annotators_rank_by_rule(
    tiny_project: Project, annotator: User
) -> None:
    base = model_version_base_ensure(project=tiny_project)
    job = _round(tiny_project, base, "ranking")
    generation_job_execute(job_id=job.pk)
    Response.objects.filter(prompt__project=tiny_project).update(finish_reason="stop")
    rankings = list(Comparison.objects.filter(project=tiny_project).items())
    assert len(rankings) == 3  # one per prompt, of its distinct samples
    for ranking in rankings:
        assert ranking.is_ranking and 3 <= len(ranking.responses) <= 4
        assert ranking.selection == {"strategy": "ranking", "k": 4}
    work = judge_by_rule(project=tiny_project, annotators=[annotator], rule=BUILTIN_RULES["longer"])
    assert work.judgments == 3 and work.chars_read > 0
    # The rule's ranks: every implied pair of unequal lengths went to the longer one.
    for pair in PreferencePair.objects.filter(project=tiny_project).select_related(
        "chosen", "rejected"
    ):
        if pair.kind == "preference":
            assert len(pair.chosen.text) > len(pair.rejected.text)
        else:
            assert len(pair.chosen.text) == len(pair.rejected.text)
    assert PreferencePair.objects.filter(project=tiny_project).count() == sum(
        len(r.responses) * (len(r.responses) - 1) // 2 for r in rankings
    )


def test_ranks_by_rule_orders_by_wins_and_levels_equal_scores() -> None:
    from alignment.engine.rules import ranks_by_rule

    longer = BUILTIN_RULES["longer"]
    assert ranks_by_rule(longer, "q", ["bb", "a", "cccc", "dd"]) == [2, 3, 1, 2]
