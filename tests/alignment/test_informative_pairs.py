"""A round samples K > 2 responses per prompt and shows the two its pair selection picks,
recorded on the comparison."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from alignment.models import GenerationJob
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import round_prompts_choose, round_start
from alignment.workers.generation import generation_job_execute
from annotate.models import Comparison, Project, Response
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
