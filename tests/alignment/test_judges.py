"""Model judges beside people: added as members of kind "model", run on the worker as a job,
their answers written through the judgment services as suggestions (never counted), votes
(one toward the overlap, under the queue's leases) or fill-ins (deciding a comparison no person
reached); a judge job whose worker died is recovered like any other job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from alignment.models import JudgeJob, JudgeKind, JudgeMode
from alignment.services.judges import judge_add, judge_run_start
from alignment.workers import judging as judging_worker
from alignment.workers.judging import judge_job_execute
from annotate.exports import CardFigures, ExportFilters, dataset_card, export_rows
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    MemberKind,
    Membership,
    PairKind,
    PreferencePair,
    Project,
)
from annotate.quality import project_quality
from annotate.queue import assignment_next
from annotate.services.comparisons import (
    comparison_adjudicate,
    comparison_gold_set,
    comparison_send_back,
)
from annotate.services.judgments import JudgmentRejected, judgment_submit
from annotate.services.model_judgments import judgment_fill, judgment_suggest
from annotate.services.snapshots import SnapshotFilters, snapshot_create
from core.errors import ValidationFailed
from core.jobs import jobs_recover
from core.models import JobStatus
from tests.factories import client_make, comparison_make, member_make, ranking_make
from tests.openai_standin import Reply, prefers_shorter, standin_server

pytestmark = pytest.mark.django_db

SHORT, LONG = "Short answer.", "A much longer answer with detail."


def _pairs(project: Project, count: int) -> list[Comparison]:
    prompts = list(project.prompts.filter(split="train"))
    # Every other pair shows the long answer as response a: a judge cannot be right by side.
    return [
        comparison_make(
            prompts[i % len(prompts)], (SHORT, LONG) if i % 2 else (LONG, SHORT), seed=i
        )
        for i in range(count)
    ]


def _run(judge: Any, **options: Any) -> JudgeJob:
    job = judge_run_start(judge=judge, dispatch=False, **options)
    judge_job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def _shorter_chosen(comparison: Comparison) -> bool:
    pair = PreferencePair.objects.get(comparison=comparison)
    return pair.kind == PairKind.PREFERENCE and pair.chosen.text == SHORT


def test_it_adds_a_judge_as_a_model_member_that_cannot_log_in(project: Project, lead: User) -> None:
    judge = judge_add(project=project, name="Shorter", kind=JudgeKind.RULE, rule="shorter")
    membership = Membership.objects.get(project=project, user=judge.user)
    assert membership.kind == MemberKind.MODEL and membership.role == "annotator"
    assert not judge.user.has_usable_password()
    assert judge.mode == JudgeMode.SUGGEST


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"kind": "rule", "rule": ""}, "rule:"),
        ({"kind": "rule", "rule": "no_such_rule"}, "rule: unknown judge rule"),
        ({"kind": "llm", "base_url": "localhost:8000", "model_name": "m"}, "base_url:"),
        ({"kind": "llm", "base_url": "http://h/v1", "model_name": ""}, "model_name:"),
        (
            {"kind": "llm", "base_url": "http://h/v1", "model_name": "m", "api_key_env": "sk-1"},
            "api_key_env:",
        ),
        ({"kind": "oracle"}, "kind:"),
        ({"kind": "local", "mode": "boss"}, "mode:"),
        ({"kind": "local", "requests_per_minute": 0}, "requests_per_minute:"),
        ({"kind": "local", "name": " "}, "name:"),
    ],
)
def test_it_refuses_a_judge_that_could_not_work_naming_the_field(
    project: Project, options: dict[str, Any], names: str
) -> None:
    before = User.objects.count()
    with pytest.raises(ValidationFailed, match=names):
        judge_add(project=project, **{"name": "J", **options})
    assert User.objects.count() == before


def test_suggestions_never_count_and_wait_for_no_one(project: Project, annotator: User) -> None:
    comparisons = _pairs(project, 4)
    judge = judge_add(project=project, name="Rule", kind=JudgeKind.RULE, rule="shorter")
    job = _run(judge)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.summary["answered"] == 4 and job.summary["asks_agree"] == 1.0
    suggestions = Judgment.objects.filter(kind=JudgmentKind.SUGGESTION)
    assert {s.comparison_id for s in suggestions} == {c.pk for c in comparisons}
    assert all(
        s.choice == ("a" if s.comparison.response_a.text == SHORT else "b") for s in suggestions
    )
    assert not PreferencePair.objects.exists()
    assert all(c.judgment_count == 0 for c in Comparison.objects.all())
    # The annotator is still handed every pair, and their vote alone decides it.
    comparison = assignment_next(project=project, annotator=annotator).comparison
    judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="tie")
    assert PreferencePair.objects.get(comparison=comparison).kind == PairKind.TIE
    # A second pass suggests nothing twice.
    assert _run(judge).summary["answered"] == 0
    with pytest.raises(JudgmentRejected, match="already suggested"):
        judgment_suggest(comparison_id=comparison.pk, judge=judge.user, choice="a")


def test_a_voting_judge_is_one_vote_toward_the_overlap(project: Project, annotator: User) -> None:
    project.overlap = 2
    project.save(update_fields=["overlap"])
    comparisons = _pairs(project, 3)
    judge = judge_add(
        project=project, name="Rule", kind=JudgeKind.RULE, rule="shorter", mode=JudgeMode.VOTE
    )
    job = _run(judge)
    assert job.summary["answered"] == 3
    for comparison in Comparison.objects.filter(pk__in=[c.pk for c in comparisons]):
        assert comparison.judgment_count == 1 and comparison.status == ComparisonStatus.OPEN
    for comparison in comparisons:
        judgment_submit(
            comparison_id=comparison.pk,
            annotator=annotator,
            choice="a" if comparison.response_a.text == SHORT else "b",
        )
        assert _shorter_chosen(comparison)
    assert PreferencePair.objects.get(comparison=comparisons[0]).n_judgments == 2
    # The overlap is full: a third voter is turned away.
    other = member_make(project, "third")
    with pytest.raises(JudgmentRejected, match="all the judgments it needs"):
        judgment_submit(comparison_id=comparisons[0].pk, annotator=other, choice="a")


def test_a_filling_judge_decides_only_what_no_person_reached(
    project: Project, annotator: User
) -> None:
    voted, held, *untouched = _pairs(project, 4)
    judgment_submit(comparison_id=voted.pk, annotator=annotator, choice="tie")
    other = member_make(project, "holder")
    while assignment_next(project=project, annotator=other).comparison.pk != held.pk:
        pass
    assignment = assignment_next(project=project, annotator=other)
    assert assignment is not None and assignment.comparison.pk == held.pk
    judge = judge_add(
        project=project, name="Rule", kind=JudgeKind.RULE, rule="shorter", mode=JudgeMode.FILL
    )
    job = _run(judge)
    assert job.summary["answered"] == len(untouched)
    for comparison in untouched:
        comparison.refresh_from_db()
        assert comparison.status == ComparisonStatus.COMPLETE and comparison.judgment_count == 0
        assert _shorter_chosen(comparison)
        assert PreferencePair.objects.get(comparison=comparison).n_judgments == 1
    assert PreferencePair.objects.get(comparison=voted).kind == PairKind.TIE
    assert not Judgment.objects.filter(comparison=held, kind=JudgmentKind.FILL).exists()
    with pytest.raises(JudgmentRejected, match="A person has reached"):
        judgment_fill(comparison_id=voted.pk, judge=judge.user, choice="a")
    # A reviewer's decision replaces a fill-in; sending it back reopens it for people.
    filled = untouched[0]
    comparison_adjudicate(comparison=filled, reviewer=annotator, choice="tie")
    assert PreferencePair.objects.get(comparison=filled).kind == PairKind.TIE
    comparison_send_back(comparison=filled, reviewer=annotator)
    filled.refresh_from_db()
    assert (
        filled.status == ComparisonStatus.OPEN
        and not PreferencePair.objects.filter(comparison=filled).exists()
    )


def test_only_a_model_member_suggests_or_fills(project: Project, annotator: User) -> None:
    comparison = _pairs(project, 1)[0]
    with pytest.raises(JudgmentRejected, match="Only a model judge"):
        judgment_suggest(comparison_id=comparison.pk, judge=annotator, choice="a")
    with pytest.raises(JudgmentRejected, match="Only a model judge"):
        judgment_fill(comparison_id=comparison.pk, judge=annotator, choice="a")


def test_an_llm_judge_runs_against_an_endpoint_and_records_what_it_cost(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    comparisons = _pairs(project, 4)
    monkeypatch.setenv("STANDIN_KEY", "sk-test")
    with standin_server(prefers_shorter) as server:
        judge = judge_add(
            project=project,
            name="Endpoint",
            kind=JudgeKind.LLM,
            base_url=server.base_url,
            model_name="judge-model",
            api_key_env="STANDIN_KEY",
            requests_per_minute=10_000,
            usd_per_million_input=2.0,
            usd_per_million_output=8.0,
        )
        job = _run(judge)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert len(server.requests) == 2 * len(comparisons)
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test"
    assert "Prefer **correct** answers." in server.requests[0].body["messages"][0]["content"]
    summary = job.summary
    assert summary["answered"] == 4 and summary["requests"] == 8
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (800, 8)
    assert summary["cost_usd"] == pytest.approx((800 * 2.0 + 8 * 8.0) / 1e6)


def test_malformed_answers_are_no_judgment_and_a_logged_reason(project: Project) -> None:
    _pairs(project, 3)
    with standin_server(lambda body: Reply("Hard to say, honestly.")) as server:
        judge = judge_add(
            project=project,
            name="Vague",
            kind=JudgeKind.LLM,
            base_url=server.base_url,
            model_name="m",
            mode=JudgeMode.VOTE,
            requests_per_minute=10_000,
        )
        job = _run(judge)
    assert job.status == JobStatus.SUCCEEDED
    assert job.summary["failed"] == 3 and job.summary["answered"] == 0
    assert "no answer (malformed answer" in job.log_tail
    assert not Judgment.objects.filter(annotator=judge.user).exists()
    # Skipped, with the reason on record: the queue does not hand them to the judge again.
    assert assignment_next(project=project, annotator=judge.user) is None


def test_a_judge_without_its_key_fails_its_job_saying_what_to_set(project: Project) -> None:
    _pairs(project, 1)
    judge = judge_add(
        project=project,
        name="Keyless",
        kind=JudgeKind.LLM,
        base_url="http://127.0.0.1:9/v1",
        model_name="m",
        api_key_env="PREFLOOP_TEST_UNSET_KEY",
    )
    job = judge_run_start(judge=judge, dispatch=False)
    with pytest.raises(Exception, match="PREFLOOP_TEST_UNSET_KEY is not set"):
        judge_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "PREFLOOP_TEST_UNSET_KEY" in job.error


def test_uncertain_pairs_are_ties_where_allowed_and_skipped_where_not(project: Project) -> None:
    comparisons = _pairs(project, 2)
    with standin_server(lambda body: Reply("A")) as server:  # always the first shown
        judge = judge_add(
            project=project,
            name="Positional",
            kind=JudgeKind.LLM,
            base_url=server.base_url,
            model_name="m",
            mode=JudgeMode.FILL,
            requests_per_minute=10_000,
        )
        job = _run(judge, limit=1)
        assert job.summary["uncertain"] == 1 and job.summary["first_shown_share_one_ask"] == 1.0
        assert PreferencePair.objects.get(comparison=comparisons[0]).kind == PairKind.TIE
        project.allow_tie = False
        project.save(update_fields=["allow_tie"])
        job = _run(judge)
    assert job.summary["uncertain"] == 1 and job.summary["answered"] == 0
    assert "uncertain" in job.log_tail
    assert not PreferencePair.objects.filter(comparison=comparisons[1]).exists()


def test_one_pass_at_a_time_and_the_mode_recorded_on_each_pass(project: Project) -> None:
    judge = judge_add(project=project, name="Rule", kind=JudgeKind.RULE, rule="shorter")
    judge_run_start(judge=judge, dispatch=False)
    with pytest.raises(ValidationFailed, match="already running"):
        judge_run_start(judge=judge, dispatch=False)
    JudgeJob.objects.update(status=JobStatus.SUCCEEDED)
    assert judge_run_start(judge=judge, mode=JudgeMode.FILL, dispatch=False).mode == JudgeMode.FILL
    judge.refresh_from_db()
    assert judge.mode == JudgeMode.FILL
    assert [job.mode for job in judge.jobs.order_by("id")] == [JudgeMode.SUGGEST, JudgeMode.FILL]


class WorkerDied(BaseException):
    """What a killed worker amounts to for the job: it stops, and records nothing."""


def test_a_judge_job_whose_worker_died_is_recovered_and_answers_only_the_rest(
    project: Project, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks
) -> None:
    comparisons = _pairs(project, 4)
    judge = judge_add(project=project, name="Rule", kind=JudgeKind.RULE, rule="shorter")
    job = judge_run_start(judge=judge, dispatch=False)
    real = judging_worker.job_heartbeat

    def heartbeat(job: Any, **kwargs: Any) -> bool:
        alive = real(job, **kwargs)
        if kwargs["fields"]["progress_done"] == 2:
            raise WorkerDied
        return alive

    with monkeypatch.context() as patch:
        patch.setattr(judging_worker, "job_heartbeat", heartbeat)
        with pytest.raises(WorkerDied):
            judge_job_execute(job_id=job.pk)
    assert Judgment.objects.filter(kind=JudgmentKind.SUGGESTION).count() == 2
    JudgeJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks() as callbacks:
        recovered = jobs_recover()
    assert [(type(j), j.pk) for j, _ in recovered] == [(JudgeJob, job.pk)]
    assert len(callbacks) == 1  # the job's message sent again
    judge_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2
    assert job.summary["answered"] == 2
    suggested = Judgment.objects.filter(kind=JudgmentKind.SUGGESTION)
    assert sorted(s.comparison_id for s in suggested) == sorted(c.pk for c in comparisons)


def test_a_lead_adds_and_runs_a_judge_from_the_judges_page(
    project: Project, lead: User, django_capture_on_commit_callbacks
) -> None:
    client = client_make(lead)
    url = f"/p/{project.slug}/judges/"
    fields = {
        "name": "Shorter",
        "kind": "rule",
        "rule": "shorter",
        "mode": "suggest",
        "requests_per_minute": 60,
        "timeout_seconds": 60,
        "max_retries": 4,
        "usd_per_million_input": 0,
        "usd_per_million_output": 0,
    }
    refused = client.post(url, {**fields, "rule": "nope"})
    assert refused.status_code == 422 and b"rule: unknown judge rule" in refused.content
    assert not project.judges.exists()
    added = client.post(url, fields)
    assert added.status_code == 302
    judge = project.judges.get()
    page = client.get(url)
    assert b"Shorter" in page.content and b"Not run yet." in page.content
    with django_capture_on_commit_callbacks() as dispatched:
        ran = client.post(f"{url}{judge.pk}/run/", {"mode": "vote", "limit": 5})
    assert ran.status_code == 302 and len(dispatched) == 1
    job = judge.jobs.get()
    assert (job.mode, job.limit, job.status) == (JudgeMode.VOTE, 5, JobStatus.QUEUED)
    page = client.get(url)
    assert b'hx-trigger="every 2s"' in page.content  # it follows the queued pass


def test_the_quality_report_measures_each_judge_against_the_people_apart(
    project: Project, annotator: User, lead: User
) -> None:
    project.overlap = 2
    project.save(update_fields=["overlap"])
    comparisons = _pairs(project, 6)
    gold = comparisons[-1]
    comparison_gold_set(comparison=gold, gold_choice="a" if gold.response_a.text == SHORT else "b")
    second = member_make(project, "second")
    for person in (annotator, second):
        for comparison in comparisons:
            short_is_a = comparison.response_a.text == SHORT
            judgment_submit(
                comparison_id=comparison.pk, annotator=person, choice="a" if short_is_a else "b"
            )
    agreeing = judge_add(project=project, name="Agreeing", kind=JudgeKind.RULE, rule="shorter")
    contrary = judge_add(project=project, name="Contrary", kind=JudgeKind.RULE, rule="longer")
    for judge in (agreeing, contrary):
        assert _run(judge).summary["answered"] == 6
    people_only = project_quality(project=project)
    assert [a.username for a in people_only.annotators] == ["ann", "second"]
    assert people_only.judgments == 12 and people_only.alpha.value == 1.0
    judges = {j.name: j for j in people_only.judges}
    assert set(judges) == {"Agreeing", "Contrary"}
    good, bad = judges["Agreeing"], judges["Contrary"]
    assert good.answers == 6 and good.kappa_with_majority.value == 1.0
    assert good.kappa_with_majority.n == 5  # the gold item is measured apart
    assert good.alpha_with_people.value == 1.0 and not good.flagged
    assert (good.bias.gold_correct.hits, good.bias.gold_correct.n) == (1, 1)
    assert good.bias.chosen_longer.value == 0.0
    # Never with the majority: kappa below chance (-0.92, as 3 a's and 2 b's give).
    assert bad.bias.with_majority.value == 0.0 and bad.bias.with_majority.n == 5
    assert bad.kappa_with_majority.value == pytest.approx(-12 / 13) and bad.flagged
    assert bad.bias.gold_correct.value == 0.0 and bad.bias.chosen_longer.value == 1.0
    page = client_make(lead).get(f"/p/{project.slug}/quality/")
    assert page.status_code == 200
    assert b'data-judge="Contrary" class="flagged" data-flagged' in page.content
    assert b'data-judge="Agreeing">' in page.content


def test_a_snapshot_records_which_judges_decided_its_pairs_and_how(
    project: Project, annotator: User
) -> None:
    by_person = _pairs(project, 4)[0]
    judgment_submit(comparison_id=by_person.pk, annotator=annotator, choice="a")
    voter = judge_add(
        project=project, name="Voter", kind=JudgeKind.RULE, rule="shorter", mode=JudgeMode.VOTE
    )
    _run(voter, limit=1)
    filler = judge_add(
        project=project, name="Filler", kind=JudgeKind.RULE, rule="shorter", mode=JudgeMode.FILL
    )
    _run(filler)
    suggester = judge_add(project=project, name="Suggester", kind=JudgeKind.RULE, rule="longer")
    _run(suggester)
    snapshot = snapshot_create(project=project, filters=SnapshotFilters())
    assert snapshot.n_pairs == 4
    assert snapshot.model_judges == [
        {"judge": "Filler", "votes": 0, "fills": 2},
        {"judge": "Voter", "votes": 1, "fills": 0},
    ]


def test_a_models_answers_are_marked_in_the_api_the_review_page_and_the_dataset_card(
    project: Project, annotator: User, lead: User
) -> None:
    by_person, filled = _pairs(project, 2)
    judgment_submit(comparison_id=by_person.pk, annotator=annotator, choice="a")
    filler = judge_add(
        project=project, name="Filler", kind=JudgeKind.RULE, rule="shorter", mode=JudgeMode.FILL
    )
    _run(filler)
    client = client_make(lead)
    listed = client.get(f"/api/v1/projects/{project.slug}/judgments/").json()["results"]
    assert {(j["kind"], j["by_model"]) for j in listed} == {("vote", False), ("fill", True)}
    page = client.get(f"/p/{project.slug}/review/{filled.pk}/")
    assert page.status_code == 200 and b"data-by-model" in page.content
    figures = CardFigures()
    rows = list(
        export_rows(project=project, format="dpo", filters=ExportFilters(), figures=figures)
    )
    assert len(rows) == 2
    card = dataset_card(
        project=project, format="dpo", file_type="jsonl", filters=ExportFilters(), figures=figures
    )
    assert "- Filler (a model): 0 votes, 1 fill-ins" in card


def test_a_voting_judge_ranks_a_ranking_by_its_verdicts_on_each_two(project: Project) -> None:
    texts = ("A middling answer here.", "Short.", "The longest answer of the four, by far.", "Mid.")
    ranking = ranking_make(project.prompts.filter(split="train")[0], texts)
    judge = judge_add(
        project=project, name="Rule", kind=JudgeKind.RULE, rule="shorter", mode=JudgeMode.VOTE
    )
    job = _run(judge)
    assert job.summary["answered"] == 1 and job.summary["pairs_asked"] == 6
    vote = Judgment.objects.get(comparison=ranking, kind=JudgmentKind.VOTE)
    length = {r.pk: len(r.text) for r in ranking.prompt.responses.all()}
    by_length = sorted(vote.shown, key=lambda pk: length[pk])
    assert [vote.ranks[vote.shown.index(pk)] for pk in by_length] == [1, 2, 3, 4]
    # Its six implied pairs are decided as the rule decides them (overlap 1).
    pairs = PreferencePair.objects.filter(comparison__ranking=ranking)
    assert pairs.count() == 6
    assert all(length[p.chosen_id] < length[p.rejected_id] for p in pairs)
