"""The judging screen: the pair to judge, a judgment, a skip, undo, the guidelines, the\nannotator's own judgments. Keyboard first; each action answers with the next pair."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.template.backends.utils import csrf_input
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import selectors
from annotate.access import access_comparison, access_project
from annotate.forms import GuidelineForm
from annotate.models import SCORE_MAX, SCORE_MIN, Judgment, Lease, Project, Response, Role
from annotate.queue import (
    SKIP_REASONS,
    Assignment,
    assignment_next,
    comparison_skip,
    skip_undo,
)
from annotate.services.judgments import (
    MAX_TIME_SPENT_MS,
    STRENGTHS,
    ComparisonMissing,
    EarlierChoice,
    JudgmentRejected,
    judgment_submit,
    judgment_undo,
    judgment_undoable,
)
from annotate.services.projects import guideline_acknowledge, guideline_current, guideline_publish
from annotate.views.pages import int_or_none, page_context
from core.errors import ValidationFailed
from core.http import AuthedRequest

_ID_SENTINEL = 987654321
_PAIR_URLS = ("judge", "skip")  # the URLs of the pair on screen
_CRITERION_SIDES = (("left", "Left"), ("right", "Right"), ("tie", "Same"))
_CRITERION_RATINGS = (("good", "Good"), ("bad", "Bad"))


@functools.lru_cache(maxsize=512)
def _annotation_urls(slug: str) -> dict[str, str]:
    """The annotation page's URLs for a project, comparison URLs with a sentinel id (see
    `_pair_urls`). Reversing them on every judgment was a visible part of its CPU."""
    urls = {
        name: reverse(name, args=[slug])
        for name in ("annotate", "undo", "guidelines_acknowledge", "guidelines", "my_judgments")
    }
    urls.update({name: reverse(name, args=[slug, _ID_SENTINEL]) for name in _PAIR_URLS})
    return urls


def _pair_urls(slug: str, comparison_id: int | None) -> dict[str, str]:
    urls = dict(_annotation_urls(slug))
    for name in _PAIR_URLS:
        # The id is the last number in the path (the slug comes before it).
        head, _, tail = urls[name].rpartition(str(_ID_SENTINEL))
        urls[name] = f"{head}{comparison_id}{tail}" if comparison_id is not None else ""
    return urls


def _pair_context(
    request: AuthedRequest,
    project: Project,
    error: str = "",
    *,
    holds_nothing: bool = False,
    judged: Judgment | None = None,
    skipped: Lease | None = None,
    earlier: EarlierChoice | None = None,
) -> dict[str, Any]:
    """What the pair fragment shows. After a submit, `judged` is the judgment just made (the
    one undo would take back) and the annotator holds no lease any more. After a skip,
    `skipped` is its lease: the last action, which U takes back. After an undo, `earlier` is
    the choice taken back, shown pre-selected."""
    assignment = assignment_next(
        project=project, annotator=request.user, holds_nothing=holds_nothing
    )
    progress = selectors.annotator_progress(
        project=project,
        annotator=request.user,
        remaining=assignment.available if assignment is not None else None,
    )
    seen, current = progress.guideline_seen_version, progress.guideline_version
    unseen = (
        list(project.guidelines.filter(version__gt=seen).order_by("version"))
        if current is not None and seen is not None and seen < current
        else []
    )
    # A swapped-in fragment shows the guidelines only when they changed (the banner and the
    # panel beside it); the whole page always shows them.
    guideline = unseen[-1] if unseen else None
    if guideline is None and not request.htmx:
        guideline = guideline_current(project=project)
    comparison = assignment.comparison if assignment else None
    return page_context(
        request,
        project,
        assignment=assignment,
        comparison=comparison,
        urls=_pair_urls(project.slug, comparison.pk if comparison else None),
        # One token for the fragment's forms: {% csrf_token %} masks a new one for each.
        csrf_field=csrf_input(request),
        guideline=guideline,
        unseen_guidelines=unseen,
        first_visit=seen == 0,
        progress=progress,
        undoable=(
            None
            if skipped is not None
            else judged
            if judged is not None and project.undo_seconds
            else judgment_undoable(project=project, annotator=request.user)
        ),
        skipped=skipped if project.undo_seconds else None,
        # What model judges suggested on the pair just judged: only now, after the vote.
        suggestions=selectors.suggestions_after_vote(judgment=judged) if judged else [],
        judged_comparison=judged.comparison_id if judged else None,
        earlier=earlier if earlier is not None and assignment is not None else None,
        criterion_sides=(
            [(str(i), str(i)) for i in range(1, len(assignment.shown) + 1)] + [("tie", "Same")]
            if assignment is not None and assignment.shown
            else _CRITERION_RATINGS
            if assignment is not None and assignment.rated
            else _CRITERION_SIDES
        ),
        scores=range(SCORE_MIN, SCORE_MAX + 1),
        strengths=STRENGTHS,
        skip_reasons=SKIP_REASONS,
        idempotency_key=uuid.uuid4().hex,
        shown_at=int(timezone.now().timestamp() * 1000),
        error=error,
    )


def _pair_response(
    request: AuthedRequest, project: Project, error: str = "", **context_options: Any
) -> HttpResponse:
    """The annotation page, or under htmx just its #pair fragment (what a submit swaps in)."""
    template = "annotate/annotate.html#pair" if request.htmx else "annotate/annotate.html"
    context = _pair_context(request, project, error, **context_options)
    return render(request, template, context, status=422 if error else 200)


@login_required
@require_GET
def annotate(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    return _pair_response(request, project)


def _after_action(
    request: AuthedRequest, project: Project, error: str = "", **context_options: Any
) -> HttpResponse:
    if request.htmx or error:
        return _pair_response(request, project, error, **context_options)
    return redirect("annotate", slug=project.slug)


@login_required
@require_POST
def judge(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    shown_at = int_or_none(request.POST.get("shown_at"))
    now_ms = int(timezone.now().timestamp() * 1000)
    time_spent = now_ms - shown_at if shown_at is not None else None
    if time_spent is not None and not 0 <= time_spent <= MAX_TIME_SPENT_MS:
        time_spent = None  # a tampered or stale timestamp is no measurement
    criteria = {
        name: request.POST[f"criterion-{name}"]
        for name in project.criteria
        if request.POST.get(f"criterion-{name}")
    }
    side = request.POST.get("choice", "")
    # A ranking's form sends one rank per response shown (all bad: the choice both_bad); a
    # rating on the 1-5 scale sends its score.
    ranks = None if side else [int_or_none(r) or 0 for r in request.POST.getlist("rank")] or None
    score = None if side or ranks else int_or_none(request.POST.get("score"))
    try:
        judgment = judgment_submit(
            comparison_id=comparison_id,
            annotator=request.user,
            project=project,
            side=side or ("" if ranks is not None or score is not None else "missing"),
            ranks=ranks,
            score=score,
            idempotency_key=(request.POST.get("idempotency_key") or None),
            strength=int_or_none(request.POST.get("strength")),
            criteria=criteria,
            rationale=request.POST.get("rationale", ""),
            reason_tags=request.POST.getlist("reason_tags"),
            time_spent_ms=time_spent,
        )
    except ComparisonMissing:
        raise Http404("No such comparison.") from None
    except JudgmentRejected as error:
        return _after_action(request, project, error=str(error))
    return _after_action(request, project, holds_nothing=True, judged=judgment)


@login_required
@require_POST
def skip(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        return _after_action(request, project, error="Say why you skip this pair.")
    lease = comparison_skip(comparison=comparison, annotator=request.user, reason=reason)
    return _after_action(request, project, holds_nothing=True, skipped=lease)


@login_required
@require_POST
def skip_taken_back(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    """Undo a skip: the skipped pair comes back to judge."""
    project = access_project(user=request.user, slug=slug)
    try:
        skip_undo(project=project, annotator=request.user, comparison_id=comparison_id)
    except ValidationFailed as error:
        return _after_action(request, project, error=str(error))
    return _after_action(request, project)


@login_required
@require_POST
def undo(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    judgment_id = int_or_none(request.POST.get("judgment")) or 0
    try:
        undone = judgment_undo(project=project, annotator=request.user, judgment_id=judgment_id)
    except JudgmentRejected as error:
        return _after_action(request, project, error=str(error))
    return _after_action(request, project, earlier=EarlierChoice.of(undone))


@login_required
@require_POST
def guidelines_acknowledge(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    version = int_or_none(request.POST.get("version"))
    current = guideline_current(project=project)
    if current is not None and version is not None and 0 < version <= current.version:
        guideline_acknowledge(project=project, user=request.user, version=version)
    return _after_action(request, project)


@login_required
@require_GET
def my_judgments(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    judgments = selectors.judgments_of_annotator(project=project, annotator=request.user)
    skips = selectors.skips_of_annotator(project=project, annotator=request.user)
    undoable = judgment_undoable(project=project, annotator=request.user)
    return render(
        request,
        "annotate/my_judgments.html",
        page_context(request, project, judgments=judgments, skips=skips, undoable=undoable),
    )


@login_required
@require_GET
def my_judgment(request: AuthedRequest, slug: str, judgment_id: int) -> HttpResponse:
    """One of the annotator's own judgments, with the pair as they saw it."""
    project = access_project(user=request.user, slug=slug)
    try:
        judgment = selectors.judgment_of_annotator(
            project=project, annotator=request.user, judgment_id=judgment_id
        )
    except Judgment.DoesNotExist:
        raise Http404("No such judgment of yours.") from None
    shown = Assignment(comparison=judgment.comparison, left_is_a=judgment.left_was_a)
    found = Response.objects.in_bulk(judgment.shown)
    return render(
        request,
        "annotate/my_judgment.html",
        page_context(
            request,
            project,
            judgment=judgment,
            left=shown.left,
            right=shown.right,
            # A ranking's responses as the annotator saw them, each with its rank (none: all bad).
            ranked=[
                (found[pk], rank)
                for pk, rank in zip(
                    judgment.shown, judgment.ranks or [None] * len(judgment.shown), strict=True
                )
            ],
            earlier=EarlierChoice.of(judgment),
        ),
    )


@login_required
@require_http_methods(["GET", "POST"])
def guidelines(request: AuthedRequest, slug: str) -> HttpResponse:
    """Every member reads every version; leads publish new ones."""
    project = access_project(user=request.user, slug=slug)
    context = page_context(request, project)
    current = guideline_current(project=project)
    form = None
    if context["role"] == Role.LEAD:
        form = GuidelineForm(
            request.POST if request.method == "POST" else None,
            initial={"body": current.body if current else ""},
        )
        if request.method == "POST" and form.is_valid():
            try:
                published = guideline_publish(
                    project=project,
                    body=form.cleaned_data["body"],
                    changes=form.cleaned_data["changes"],
                    created_by=request.user,
                )
            except ValidationFailed as error:
                form.add_error("body", str(error))
            else:
                messages.success(request, f"Published guidelines v{published.version}.")
                return redirect("guidelines", slug=project.slug)
    elif request.method == "POST":
        access_project(user=request.user, slug=slug, min_role=Role.LEAD)  # publishing: a 404
    return render(
        request,
        "annotate/guidelines.html",
        {**context, "versions": selectors.guidelines_of_project(project=project), "form": form},
        status=422 if form is not None and form.errors else 200,
    )
