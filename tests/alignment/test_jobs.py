"""Generation jobs and training runs executed the way a worker does, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from alignment.models import GenerationJob, JobStatus, ModelVersion, TrainingRun
from alignment.services import (
    SamplingSettings,
    TrainingSettings,
    generation_job_execute,
    model_version_base_ensure,
    round_prompts_choose,
    round_start,
    training_run_execute,
    training_run_start,
)
from annotate.models import Comparison, Project, Response
from annotate.services import judgment_submit

pytestmark = pytest.mark.django_db

SAMPLING = SamplingSettings(max_new_tokens=10, temperature=1.0, batch_size=4)


@pytest.fixture
def tiny_project(project: Project, tiny_model_dir: str, settings, tmp_path: Path) -> Project:
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TRAINING_QUANTIZE_4BIT = False
    project.base_model = str(tiny_model_dir)
    project.save(update_fields=["base_model"])
    return project


def _round(project: Project, **kwargs) -> GenerationJob:
    base = model_version_base_ensure(project=project)
    round_ = round_start(
        project=project,
        policy=base,
        train_prompts=round_prompts_choose(project=project, count=4),
        samples_per_prompt=2,
        sampling=SAMPLING,
        dispatch=False,
        **kwargs,
    )
    return round_.generation_jobs.get()


def test_it_generates_responses_and_pairs_and_records_the_run(tiny_project: Project) -> None:
    job = _round(tiny_project)
    assert generation_job_execute(job_id=job.pk) is not None
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert job.progress_done == job.progress_total == 4
    assert job.summary["responses"] == 8 and job.summary["tokens_per_s"] > 0
    responses = Response.objects.filter(prompt__project=tiny_project)
    assert responses.count() == 8
    first = responses.first()
    assert first.generation_params["max_new_tokens"] == 10 and first.seed is not None
    assert first.completion_tokens is not None and first.finish_reason in ("stop", "length")
    comparisons = Comparison.objects.filter(project=tiny_project, round_number=1)
    assert comparisons.count() + job.summary["identical_skipped"] == 4


def test_it_ignores_a_second_delivery_of_the_same_job(tiny_project: Project) -> None:
    job = _round(tiny_project)
    generation_job_execute(job_id=job.pk)
    assert generation_job_execute(job_id=job.pk) is None
    assert Response.objects.filter(prompt__project=tiny_project).count() == 8
    job.refresh_from_db()
    assert job.attempts == 1


def test_it_records_the_error_of_a_failed_job(tiny_project: Project, tmp_path: Path) -> None:
    tiny_project.base_model = str(tmp_path / "no-such-model")
    tiny_project.save(update_fields=["base_model"])
    job = _round(tiny_project)
    with pytest.raises(ValueError):
        generation_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "no-such-model" in job.error and job.finished_at is not None


def test_it_trains_and_registers_a_child_version(tiny_project: Project, annotator: User) -> None:
    job = _round(tiny_project)
    generation_job_execute(job_id=job.pk)
    for comparison in Comparison.objects.filter(project=tiny_project):
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    base = model_version_base_ensure(project=tiny_project)
    run = training_run_start(
        project=tiny_project,
        base_version=base,
        dispatch=False,
        training=TrainingSettings(epochs=2, batch_size=2, max_length=96),
    )
    training_run_execute(run_id=run.pk)
    run = TrainingRun.objects.get(pk=run.pk)
    assert run.status == JobStatus.SUCCEEDED, run.error
    assert [p["step"] for p in run.metrics] == list(range(1, run.summary["steps"] + 1))
    assert all(p["loss"] is not None for p in run.metrics)
    child = ModelVersion.objects.get(produced_by=run)
    assert child.parent == base and child.lineage() == [child, base]
    assert (Path(child.adapter_path) / "adapter_model.safetensors").is_file() and len(
        child.adapter_sha256
    ) == 64
    assert training_run_execute(run_id=run.pk) is None  # redelivered: nothing happens


def test_it_trains_kto_on_the_ties_and_both_bad_pairs_too(
    tiny_project: Project, annotator: User
) -> None:
    job = _round(tiny_project)
    generation_job_execute(job_id=job.pk)
    comparisons = list(Comparison.objects.filter(project=tiny_project).order_by("id"))
    assert len(comparisons) >= 3
    for comparison, choice in zip(comparisons, ["a", "tie", "both_bad", "b"], strict=False):
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice=choice)
    base = model_version_base_ensure(project=tiny_project)
    run = training_run_start(
        project=tiny_project,
        base_version=base,
        dispatch=False,
        training=TrainingSettings.from_preset("kto", epochs=1, batch_size=2, max_length=96),
    )
    judged = min(len(comparisons), 4)
    # Every judged pair is in the snapshot, the tie and the both-bad one included ...
    assert run.snapshot.n_pairs == judged and "tie" in run.snapshot.filters["kinds"]
    training_run_execute(run_id=run.pk)
    run = TrainingRun.objects.get(pk=run.pk)
    assert run.status == JobStatus.SUCCEEDED, run.error
    # ... and each gives KTO two unpaired rows: steps of two rows each.
    assert run.summary["steps"] == judged and run.config["method"] == "kto"
    # A DPO run of the same data takes the preferences only.
    dpo = TrainingSettings(epochs=1, batch_size=2, max_length=96)
    later = training_run_start(
        project=tiny_project, base_version=base, dispatch=False, training=dpo
    )
    assert later.snapshot.n_pairs == judged - 2
