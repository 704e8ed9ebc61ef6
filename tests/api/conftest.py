from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import round_start
from alignment.services.training import training_run_start
from alignment.services.training_settings import TrainingSettings
from annotate.coverage import coverage_refresh
from annotate.models import Project
from annotate.services.judgments import judgment_submit
from tests.factories import comparison_make, embed_bag_of_words, ranking_make


@pytest.fixture
def objects(project: Project, lead: User, annotator: User) -> dict[str, Any]:
    """One of every object the API's paths name, in the project, by the name of the path
    parameter: requests then reach their bodies and queries instead of stopping at a 404."""
    prompts = list(project.prompts.filter(split="train").order_by("id"))
    comparison = comparison_make(prompts[0], seed=0)
    judged = comparison_make(prompts[1], seed=1)
    judgment = judgment_submit(comparison_id=judged.pk, annotator=annotator, choice="a")
    base = model_version_base_ensure(project=project)
    round_ = round_start(
        project=project, policy=base, train_prompts=prompts[2:4], created_by=lead, dispatch=False
    )
    run = training_run_start(
        project=project,
        base_version=base,
        training=TrainingSettings(),
        created_by=lead,
        dispatch=False,
    )
    coverage_refresh(project=project, embed=embed_bag_of_words)
    ranking = ranking_make(prompts[4], ("One.", "Two, longer.", "Three, the longest of all."))
    return {
        "slug": project.slug,
        "comparison_id": comparison.pk,
        "ranking_id": ranking.pk,
        "judgment_id": judgment.pk,
        "number": round_.number,
        "run_id": run.pk,
    }
