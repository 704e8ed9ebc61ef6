"""The judge worker's body: one pass of a model judge over the comparisons its mode lets it
answer, each pair asked twice with the sides swapped (engine.judges.judge_pair), the answers
written through the judgment services as a person's are. A pass that dies is run again by the
next worker (core.jobs) and answers only what is still unanswered."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from alignment.engine.judges import (
    Asker,
    JudgeFailed,
    JudgeUnusable,
    OpenAIAsker,
    PairVerdict,
    RuleAsker,
    Verdict,
    judge_pair,
    local_asker_load,
)
from alignment.engine.rules import ranks_from_verdicts, rule_load
from alignment.models import Judge, JudgeJob, JudgeKind, JudgeMode
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
)
from annotate.queue import assignment_next, comparison_skip
from annotate.services.judgments import JudgmentRejected, judgment_submit
from annotate.services.model_judgments import judgment_fill, judgment_suggest
from annotate.services.projects import guideline_current
from core.jobs import JobLost, job_execute, job_heartbeat, job_log, job_succeed


def judge_job_execute(*, job_id: int) -> JudgeJob | None:
    """Run a queued judge job to its end; None when it was not queued (a redelivery)."""
    return job_execute(JudgeJob, job_id=job_id, body=_judge_run)


def asker_make(judge: Judge) -> Asker:
    """The judge's engine side. JudgeUnusable when it cannot work on this worker."""
    if judge.kind == JudgeKind.RULE:
        try:
            return RuleAsker(rule_load(judge.rule))
        except ValueError as error:
            raise JudgeUnusable(str(error)) from None
    if judge.kind == JudgeKind.LLM:
        key = ""
        if judge.api_key_env:
            key = os.environ.get(judge.api_key_env, "")
            if not key:
                raise JudgeUnusable(
                    f"{judge.api_key_env} is not set on this worker: set it to the API key of "
                    f"{judge.base_url} in the worker's environment, then run the judge again."
                )
        return OpenAIAsker(
            base_url=judge.base_url,
            model=judge.model_name,
            api_key=key,
            timeout_s=float(judge.timeout_seconds),
            max_retries=judge.max_retries,
            requests_per_minute=float(judge.requests_per_minute),
        )
    project = judge.project
    return local_asker_load(
        source=project.base_model,
        models_dir=str(settings.MODELS_DIR),
        trust_remote_code=project.trust_remote_code,
    )


@dataclass
class _Tally:
    """What a pass did, for its summary."""

    answered: int = 0
    uncertain: int = 0  # the two asks disagreed (a tie where ties are allowed)
    failed: int = 0  # no answer (endpoint or malformed): no judgment
    passed: int = 0  # reached by a person first, or not the judge's to answer
    pairs_asked: int = 0
    consistent: int = 0
    first_picked: int = 0  # single asks that preferred the response shown first
    decisive_asks: int = 0  # single asks that preferred one (not a tie)
    a_after_swap: int = 0  # verdicts, after the swap, for the response shown first at first
    decided: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, verdict: PairVerdict) -> None:
        self.pairs_asked += 1
        self.consistent += verdict.consistent
        for ask, first in ((verdict.asked, "a"), (verdict.swapped, "b")):
            if ask != "tie":
                self.decisive_asks += 1
                self.first_picked += ask == first
        if verdict.verdict in ("a", "b"):
            self.decided += 1
            self.a_after_swap += verdict.verdict == "a"
        self.prompt_tokens += verdict.prompt_tokens
        self.completion_tokens += verdict.completion_tokens
        self.seconds += verdict.seconds

    def summary(self, judge: Judge, asker: Asker) -> dict[str, Any]:
        usage = getattr(asker, "usage", None)
        cost = (
            usage.cost_usd(
                per_million_input=judge.usd_per_million_input,
                per_million_output=judge.usd_per_million_output,
            )
            if usage is not None
            else 0.0
        )
        return {
            "answered": self.answered,
            "uncertain": self.uncertain,
            "failed": self.failed,
            "passed": self.passed,
            "pairs_asked": self.pairs_asked,
            "asks_agree": _share(self.consistent, self.pairs_asked),
            # Before the swap: how often one ask preferred the response shown first (0.5 is
            # none); after it: how often a verdict went to the response shown first in the
            # first ask.
            "first_shown_share_one_ask": _share(self.first_picked, self.decisive_asks),
            "first_shown_share_after_swap": _share(self.a_after_swap, self.decided),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": usage.requests if usage is not None else 0,
            "retries": usage.retries if usage is not None else 0,
            "cost_usd": round(cost, 6),
            "seconds_per_pair": round(self.seconds / self.pairs_asked, 3)
            if self.pairs_asked
            else 0.0,
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _judge_run(job: JudgeJob) -> None:
    judge = job.judge
    project = job.project
    asker = asker_make(judge)
    guideline = guideline_current(project=project)
    guidelines = guideline.body if guideline is not None else ""
    tally = _Tally()
    job_log(job, f"{judge} in mode {job.mode}: {job.get_mode_display().lower()}")
    work = _Pass(job=job, asker=asker, guidelines=guidelines, tally=tally)
    if job.mode == JudgeMode.VOTE:
        work.votes()
    else:
        work.answers()
    job_log(
        job,
        f"done: {tally.answered} answered, {tally.uncertain} uncertain, {tally.failed} failed, "
        f"{tally.passed} passed",
    )
    job.progress_done = job.progress_total
    job_succeed(job, summary=tally.summary(judge, asker))


@dataclass
class _Pass:
    job: JudgeJob
    asker: Asker
    guidelines: str
    tally: _Tally

    def _ask(self, comparison: Comparison) -> tuple[str, str] | None:
        """The judge's choice (a, b or tie) on the pair and a note of its two asks; None where
        it gives none (logged)."""
        try:
            verdict = judge_pair(
                self.asker,
                guidelines=self.guidelines,
                prompt=comparison.prompt.messages,
                a=comparison.response_a.text,
                b=comparison.pair_b.text,
            )
        except JudgeFailed as error:
            self.tally.failed += 1
            job_log(self.job, f"comparison {comparison.pk}: no answer ({error})")
            return None
        self.tally.add(verdict)
        note = (
            f"Model judge {self.job.judge.name}: {verdict.asked} with A shown first, "
            f"{verdict.swapped} with B shown first."
        )
        if verdict.verdict is not None:
            return verdict.verdict, note
        self.tally.uncertain += 1
        if comparison.project.allow_tie:
            return "tie", note + " Uncertain: a tie."
        job_log(
            self.job,
            f"comparison {comparison.pk}: uncertain (asked {verdict.asked} with A first, "
            f"{verdict.swapped} with B first) and this project allows no tie",
        )
        return None

    def _beat(self) -> None:
        job = self.job
        job.progress_done += 1
        if not job_heartbeat(
            job, fields={"progress_done": job.progress_done, "log_tail": job.log_tail}
        ):
            raise JobLost(f"{job} was cancelled or handed to another worker")

    def answers(self) -> None:
        """Suggestions or fill-ins on every pair still without one."""
        job, judge = self.job, self.job.judge
        todo = Comparison.objects.filter(project=job.project).items().pairwise()
        if job.round_number is not None:
            todo = todo.filter(round_number=job.round_number)
        if job.mode == JudgeMode.SUGGEST:
            todo = todo.exclude(status=ComparisonStatus.RETIRED).exclude(
                pk__in=Judgment.objects.filter(
                    annotator=judge.user, kind=JudgmentKind.SUGGESTION, superseded_at__isnull=True
                ).values("comparison_id")
            )
        else:
            todo = todo.filter(status=ComparisonStatus.OPEN, judgment_count=0, gold_choice="")
            todo = todo.exclude(
                pk__in=Lease.objects.filter(state=LeaseState.HELD).values("comparison_id")
            )
        ids = list(todo.order_by("id").values_list("id", flat=True)[: job.limit])
        job.progress_total = len(ids)
        job_log(job, f"{len(ids)} comparisons to answer")
        write = judgment_suggest if job.mode == JudgeMode.SUGGEST else judgment_fill
        for comparison_id in ids:
            comparison = Comparison.objects.select_related(
                "project", "prompt", "response_a", "response_b"
            ).get(pk=comparison_id)
            answer = self._ask(comparison)
            if answer is not None:
                try:
                    write(
                        comparison_id=comparison_id,
                        judge=judge.user,
                        choice=answer[0],
                        note=answer[1],
                    )
                    self.tally.answered += 1
                except JudgmentRejected as error:
                    self.tally.passed += 1
                    job_log(job, f"comparison {comparison_id}: not answered ({error})")
            self._beat()

    def _ranks(self, comparison: Comparison, shown: list[Any]) -> dict[str, Any] | None:
        """A ranking's answer, in the order this judge is shown it: each two of its responses
        judged as a pair is, ranked by wins minus losses (engine.rules.ranks_from_verdicts);
        an uncertain pair counts as level. None (logged) when a pair gets no answer."""
        verdicts: list[PairVerdict] = []

        def verdict(i: int, j: int) -> Verdict | None:
            found = judge_pair(
                self.asker,
                guidelines=self.guidelines,
                prompt=comparison.prompt.messages,
                a=shown[i].text,
                b=shown[j].text,
            )
            verdicts.append(found)
            return found.verdict

        try:
            ranks = ranks_from_verdicts(len(shown), verdict)
        except JudgeFailed as error:
            self.tally.failed += 1
            job_log(self.job, f"ranking {comparison.pk}: no answer ({error})")
            return None
        for found in verdicts:
            self.tally.add(found)
        self.tally.uncertain += sum(found.verdict is None for found in verdicts)
        return {
            "ranks": ranks,
            "rationale": f"Model judge {self.job.judge.name}: ranked by its verdicts on each "
            f"two, asked both ways round ({len(verdicts)} pairs).",
        }

    def votes(self) -> None:
        """Work the queue as an annotator does, one vote each, until it hands out nothing. An
        item the judge gives no answer, or whose vote is refused, is skipped with the reason."""
        job, judge = self.job, self.job.judge
        project = job.project
        job.progress_total = job.limit or 0
        while job.limit is None or self.tally.answered < job.limit:
            assignment = assignment_next(project=project, annotator=judge.user)
            if assignment is None:
                break
            comparison = assignment.comparison
            refused = "the model gave no answer"
            if comparison.is_rating:
                # A judge compares (engine.judges): it has no verdict on one response alone.
                answer, refused = None, "a model judge compares two responses; it rates none"
            elif comparison.is_ranking:
                answer = self._ranks(comparison, list(assignment.shown))
            else:
                asked = self._ask(comparison)
                answer = None if asked is None else {"choice": asked[0], "rationale": asked[1]}
            if answer is not None:
                try:
                    judgment_submit(comparison_id=comparison.pk, annotator=judge.user, **answer)
                    self.tally.answered += 1
                    refused = ""
                except JudgmentRejected as error:
                    self.tally.passed += 1
                    refused = str(error)
                    job_log(job, f"comparison {comparison.pk}: vote refused ({error})")
            if refused:
                comparison_skip(comparison=comparison, annotator=judge.user, reason=refused[:200])
            if not job.limit:
                job.progress_total += 1
            self._beat()
