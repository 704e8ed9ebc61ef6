"""Generation jobs and training runs executed the way a worker does, on a tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from alignment.models import ModelVersion, RefLogp, TrainingRun
from alignment.selectors.rounds import round_drift
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.training import training_run_cancel
from alignment.services.training_settings import TrainingSettings
from alignment.workers import training as training_worker
from alignment.workers.generation import generation_job_execute
from alignment.workers.training import snapshot_examples, training_run_execute
from annotate.models import Comparison, PreferencePair, Project, Response
from annotate.services.comparisons import comparison_adjudicate
from annotate.services.judgments import judgment_submit
from annotate.services.snapshots import (
    SnapshotFilters,
    snapshot_content_hash,
    snapshot_pairs,
    snapshot_validation_split,
)
from core.models import JobStatus
from tests.factories import (
    client_make,
    comparison_make,
    generation_job_make,
    judged_round_make,
    training_run_make,
)

pytestmark = pytest.mark.django_db


def test_it_generates_responses_and_pairs_and_records_the_run(tiny_project: Project) -> None:
    job = generation_job_make(tiny_project)
    assert generation_job_execute(job_id=job.pk) is not None
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert job.progress_done == job.progress_total == 4
    assert job.summary["responses"] == 8 and job.summary["tokens_per_s"] > 0
    responses = Response.objects.filter(prompt__project=tiny_project)
    assert responses.count() == 8
    # Each response knows the job that made it, by a foreign key.
    assert set(job.outputs.values_list("response_id", flat=True)) == set(
        responses.values_list("id", flat=True)
    )
    first = responses.first()
    assert first.generation_params["max_new_tokens"] == 10 and first.seed is not None
    assert first.completion_tokens is not None and first.finish_reason in ("stop", "length")
    comparisons = Comparison.objects.filter(project=tiny_project, round_number=1)
    assert comparisons.count() + job.summary["identical_skipped"] == 4


def test_it_reports_the_drift_of_each_rounds_policy(tiny_project: Project, lead: User) -> None:
    job = generation_job_make(tiny_project)
    generation_job_execute(job_id=job.pk)
    (row,) = round_drift(project=tiny_project)
    assert row.round_number == 1 and row.drift.responses == 8
    assert row.drift.mean_chars > 0 and 0 <= row.drift.repetition <= 1
    # At 10 new tokens a random model's responses run into the limit (it almost never says EOS).
    assert row.drift.truncated_rate > 0.5
    client = client_make(lead)
    page = client.get(f"/p/{tiny_project.slug}/rounds/")
    assert b'data-drift-round="1"' in page.content


def test_it_ignores_a_second_delivery_of_the_same_job(tiny_project: Project) -> None:
    job = generation_job_make(tiny_project)
    generation_job_execute(job_id=job.pk)
    assert generation_job_execute(job_id=job.pk) is None
    assert Response.objects.filter(prompt__project=tiny_project).count() == 8
    job.refresh_from_db()
    assert job.attempts == 1


def test_it_records_the_error_of_a_failed_job(tiny_project: Project, tmp_path: Path) -> None:
    tiny_project.base_model = str(tmp_path / "no-such-model")
    tiny_project.save(update_fields=["base_model"])
    job = generation_job_make(tiny_project)
    with pytest.raises(ValueError):
        generation_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "no-such-model" in job.error and job.finished_at is not None


def test_it_trains_and_registers_a_child_version(tiny_project: Project, annotator: User) -> None:
    judged_round_make(tiny_project, annotator)
    base = model_version_base_ensure(project=tiny_project)
    run = training_run_make(
        tiny_project, base_version=base, execute=True, epochs=2, batch_size=2, max_length=96
    )
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
    job = generation_job_make(tiny_project)
    generation_job_execute(job_id=job.pk)
    comparisons = list(Comparison.objects.filter(project=tiny_project).order_by("id"))
    assert len(comparisons) >= 3
    for comparison, choice in zip(comparisons, ["a", "tie", "both_bad", "b"], strict=False):
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice=choice)
    run = training_run_make(
        tiny_project,
        training=TrainingSettings.from_preset(
            "kto", epochs=1, batch_size=2, gradient_accumulation_steps=1, max_length=96
        ),
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
    later = training_run_make(tiny_project, epochs=1, batch_size=2, max_length=96)
    assert later.snapshot.n_pairs == judged - 2


def test_it_holds_pairs_out_and_scores_them_before_and_after(
    tiny_project: Project, annotator: User, lead: User
) -> None:
    prompts = list(tiny_project.prompts.filter(split="train").order_by("id"))
    for i in range(12):
        comparison_make(
            prompts[i % len(prompts)],
            (f"Fine {i}.", f"A long rambling answer number {i}."),
            seed=i,
            judged_by=annotator,
        )
    run = training_run_make(tiny_project, epochs=1, batch_size=4, max_length=96)
    snapshot = run.snapshot
    # About 10 % of 12 preference pairs held out, by prompt: no held-out pair's sibling (a
    # pair of the same prompt) is trained on.
    held = len(snapshot.validation_pair_ids)
    assert held >= 1 and snapshot.n_pairs == 12 - held
    assert not _prompts_of(snapshot.validation_pair_ids) & _prompts_of(snapshot.pair_ids)
    training_run_execute(run_id=run.pk)
    run = TrainingRun.objects.get(pk=run.pk)
    assert run.status == JobStatus.SUCCEEDED, run.error
    figures = run.summary["validation"]
    assert figures["pairs"] == held and run.summary["pairs"] == 12 - held
    assert set(figures) == {
        "pairs",
        "accuracy_before",
        "accuracy_after",
        "reward_accuracy",
        "reward_margin",
    }
    assert f"validation ({held} held-out pairs)" in run.log_tail
    client = client_make(lead)
    page = client.get(f"/p/{tiny_project.slug}/runs/{run.pk}/")
    assert (
        b"data-validation" in page.content and f"{held}</strong> held out".encode() in page.content
    )


def _prompts_of(pair_ids: list[int]) -> set[int]:
    return set(
        PreferencePair.objects.filter(pk__in=pair_ids).values_list("comparison__prompt", flat=True)
    )


def test_it_splits_the_same_pairs_the_same_way(project: Project, annotator: User) -> None:
    prompts = list(project.prompts.filter(split="train").order_by("id"))
    for i in range(20):
        comparison_make(prompts[i % len(prompts)], (f"A{i}", f"B{i}"), seed=i, judged_by=annotator)
    pairs = snapshot_pairs(project=project, filters=SnapshotFilters())
    training, held = snapshot_validation_split(pairs, 0.1)
    # Whole prompts held out, about 10 % of the pairs, none of their siblings trained on.
    assert len(held) >= 2 and len(training) + len(held) == 20
    held_prompts = {p.comparison.prompt_id for p in held}
    assert not held_prompts & {p.comparison.prompt_id for p in training}
    assert held == [p for p in pairs if p.comparison.prompt_id in held_prompts]
    reversed_held = snapshot_validation_split(list(reversed(pairs)), 0.1)[1]
    assert {p.pk for p in reversed_held} == {p.pk for p in held}  # order does not matter
    assert snapshot_validation_split(pairs[:9], 0.1) == (pairs[:9], [])  # too few to hold out
    with_held = snapshot_content_hash(training, held)
    assert with_held != snapshot_content_hash(pairs) and with_held == snapshot_content_hash(
        training, held
    )


def test_a_second_run_reuses_the_stored_reference_logps(
    tiny_project: Project, annotator: User
) -> None:
    judged_round_make(tiny_project, annotator)
    summaries = []
    for _ in range(2):
        run = training_run_make(tiny_project, execute=True, epochs=1, batch_size=2, max_length=96)
        assert run.status == JobStatus.SUCCEEDED, run.error
        summaries.append(run.summary)
    pairs = summaries[0]["pairs"]
    assert summaries[0]["ref_logps_reused"] == 0 and summaries[1]["ref_logps_reused"] == pairs
    assert RefLogp.objects.count() == pairs  # one row per pair and reference, not per run


def test_a_run_trains_on_the_pairs_as_frozen_not_as_judged_since(
    project: Project, annotator: User, lead: User
) -> None:
    comparison = comparison_make(
        project.prompts.filter(split="train").first(), ("A", "B"), judged_by=annotator
    )
    run = training_run_make(project)
    # A reviewer's decision flips the pair after the snapshot was taken.
    comparison_adjudicate(comparison=comparison, reviewer=lead, choice="b")
    pair = PreferencePair.objects.get(comparison=comparison)
    assert pair.chosen.text == "B"
    (frozen,) = snapshot_examples(snapshot=run.snapshot, pair_ids=run.snapshot.pair_ids)
    assert (frozen.example.chosen, frozen.example.rejected) == ("A", "B")


def test_a_cancelled_run_stops_after_its_step_and_keeps_its_adapter(
    tiny_project: Project, annotator: User, lead: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    judged_round_make(tiny_project, annotator)
    run = training_run_make(tiny_project, epochs=5, batch_size=1, max_length=96)
    client = client_make(lead)
    real_heartbeat = training_worker.job_heartbeat

    def lead_cancels_during_step_two(job: Any, **kwargs: Any) -> bool:
        if kwargs["fields"].get("progress_done") == 2:  # Cancel pressed as step 2 is reported
            answer = client.post(f"/p/{tiny_project.slug}/runs/{run.pk}/cancel/")
            assert answer.status_code == 302
        return real_heartbeat(job, **kwargs)

    monkeypatch.setattr(training_worker, "job_heartbeat", lead_cancels_during_step_two)
    training_run_execute(run_id=run.pk)
    run = TrainingRun.objects.get(pk=run.pk)
    assert run.status == JobStatus.CANCELLED
    assert run.summary["cancelled_at_step"] == 2 and run.summary["steps"] == 2
    assert (Path(run.summary["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert not ModelVersion.objects.filter(produced_by=run).exists()
    assert [p["step"] for p in run.metrics] == [1, 2]
    assert run.metrics[0]["tokens_per_s"] > 0 and run.metrics[0]["memory_mb"] > 0


def test_a_queued_run_cancelled_never_starts(project: Project, annotator: User) -> None:
    comparison_make(project.prompts.filter(split="train").first(), judged_by=annotator)
    run = training_run_make(project)
    page = client_make(project.memberships.get(role="lead").user).get(
        f"/p/{project.slug}/runs/{run.pk}/"
    )
    assert f'data-confirm="Cancel training run {run.pk}?' in page.content.decode()  # asks first
    assert training_run_cancel(run=run) is True
    assert training_run_execute(run_id=run.pk) is None
    assert TrainingRun.objects.get(pk=run.pk).status == JobStatus.CANCELLED
    assert training_run_cancel(run=run) is False  # already over


def test_a_worker_set_to_vllm_without_it_fails_the_job_saying_so(
    tiny_project: Project, settings
) -> None:
    import sys

    settings.GENERATION_BACKEND = "vllm"
    job = generation_job_make(tiny_project)
    saved = sys.modules.get("vllm")
    sys.modules["vllm"] = None  # type: ignore[assignment]  # not installed on this worker
    try:
        with pytest.raises(RuntimeError, match="vLLM is not installed on this worker"):
            generation_job_execute(job_id=job.pk)
    finally:
        if saved is None:
            del sys.modules["vllm"]
        else:
            sys.modules["vllm"] = saved
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "pip install vllm" in job.error
    assert not Response.objects.filter(prompt__project=tiny_project).exists()


def test_a_run_page_says_its_phase_from_the_start_and_its_plan_as_its_log_does(
    tiny_project: Project, annotator: User, lead: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    judged_round_make(tiny_project, annotator)
    run = training_run_make(tiny_project, epochs=1, batch_size=1, max_length=96)
    client = client_make(lead)
    page = client.get(f"/p/{tiny_project.slug}/runs/{run.pk}/").content.decode()
    assert "<strong>Now:</strong> waiting for a worker" in page
    # Asked to continue the parent's adapter, a run of the base starts a fresh one: the page
    # says what will happen, as the log does.
    assert "A fresh adapter on the base model" in page and "Reference</dt><dd" in page
    seen: list[str] = []
    real_heartbeat = training_worker.job_heartbeat

    def page_at_each_beat(job: Any, **kwargs: Any) -> bool:
        alive = real_heartbeat(job, **kwargs)
        shown = client.get(f"/p/{tiny_project.slug}/runs/{run.pk}/").content.decode()
        now = shown.split("<strong>Now:</strong>", 1)[1].split("</p>", 1)[0].strip()
        seen.append(now)
        return alive

    monkeypatch.setattr(training_worker, "job_heartbeat", page_at_each_beat)
    training_run_execute(run_id=run.pk)
    assert seen[0] == "loading the model"  # before any step
    assert "reference log-probabilities" in seen
    assert any(now.startswith("training, step 1 of") for now in seen), seen
    run = TrainingRun.objects.get(pk=run.pk)
    assert run.status == JobStatus.SUCCEEDED
    assert "a fresh adapter on the base model; reference: the base model" in run.log_tail
    # Once done, the page gives each phase's time, in the order they ran.
    phases = [name for name, _ in run.summary["phases"]]
    assert phases[:3] == [
        "loading the model",
        "laying out the pairs",
        "reference log-probabilities",
    ]
    assert "training" in phases and phases[-1] == "saving the adapter"
    assert all(seconds >= 0 for _, seconds in run.summary["phases"])
    page = client.get(f"/p/{tiny_project.slug}/runs/{run.pk}/").content.decode()
    table = page.split("data-phases>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == len(phases) and "Reference log-probabilities" in table


def test_a_worker_set_to_a_vllm_server_generates_a_round_through_it(
    tiny_project: Project, settings
) -> None:
    from tests.engine.vllm_standin import VllmStandIn

    settings.GENERATION_BACKEND = "vllm"
    job = generation_job_make(tiny_project)
    with VllmStandIn() as server:
        settings.VLLM_URL = server.url
        generation_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    completions = [body for _, path, body in server.requests if path == "/v1/completions"]
    assert len(completions) == 1  # the whole job in one request
    prompts = job.prompts.count()
    assert len(completions[0]["prompt"]) == prompts
    responses = Response.objects.filter(generation__job=job)
    assert responses.count() == prompts * completions[0]["n"]
    assert all("sample" in r.text for r in responses)
    # The round's comparisons were formed from them, as with the transformers backend.
    assert Comparison.objects.filter(project=tiny_project).exists()
