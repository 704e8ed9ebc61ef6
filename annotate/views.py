from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from annotate import selectors
from annotate.access import access_comparison, access_project, project_role
from annotate.http import AuthedRequest
from annotate.models import Project, Role
from annotate.queue import comparison_next_for_annotator, comparison_skip
from annotate.services import (
    MAX_TIME_SPENT_MS,
    JudgmentRejected,
    choice_from_side,
    guideline_current,
    judgment_submit,
)


def _page_context(request: AuthedRequest, project: Project, **extra: Any) -> dict[str, Any]:
    role = project_role(user=request.user, project=project)
    return {"project": project, "role": role.value if role else None, **extra}


@login_required
@require_GET
def home(request: AuthedRequest) -> HttpResponse:
    projects = selectors.project_cards_for_user(user=request.user)
    return render(request, "annotate/home.html", {"projects": projects})


@login_required
@require_GET
def project_overview(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    context = _page_context(request, project)
    if context["role"] == Role.ANNOTATOR:
        return redirect("annotate", slug=project.slug)
    overview = selectors.project_overview(project=project)
    return render(request, "annotate/overview.html", {**context, "overview": overview})


def _pair_context(request: AuthedRequest, project: Project, error: str = "") -> dict[str, Any]:
    comparison = comparison_next_for_annotator(project=project, annotator=request.user)
    guideline = guideline_current(project=project)
    return _page_context(
        request,
        project,
        comparison=comparison,
        guideline=guideline,
        progress=selectors.annotator_progress(project=project, annotator=request.user),
        idempotency_key=uuid.uuid4().hex,
        shown_at=int(timezone.now().timestamp() * 1000),
        error=error,
    )


@login_required
@require_GET
def annotate(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    context = _pair_context(request, project)
    template = "annotate/annotate.html#pair" if request.htmx else "annotate/annotate.html"
    return render(request, template, context)


def _after_action(request: AuthedRequest, project: Project, error: str = "") -> HttpResponse:
    if request.htmx:
        status = 422 if error else 200
        return render(
            request,
            "annotate/annotate.html#pair",
            _pair_context(request, project, error),
            status=status,
        )
    if error:
        return render(
            request, "annotate/annotate.html", _pair_context(request, project, error), status=422
        )
    return redirect("annotate", slug=project.slug)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@login_required
@require_POST
def judge(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    shown_at = _int_or_none(request.POST.get("shown_at"))
    now_ms = int(timezone.now().timestamp() * 1000)
    time_spent = now_ms - shown_at if shown_at is not None else None
    if time_spent is not None and not 0 <= time_spent <= MAX_TIME_SPENT_MS:
        time_spent = None  # a tampered or stale timestamp is no measurement
    try:
        judgment_submit(
            comparison_id=comparison.pk,
            annotator=request.user,
            choice=choice_from_side(comparison=comparison, side=request.POST.get("choice", "")),
            idempotency_key=(request.POST.get("idempotency_key") or None),
            strength=_int_or_none(request.POST.get("strength")),
            rationale=request.POST.get("rationale", ""),
            reason_tags=request.POST.getlist("reason_tags"),
            time_spent_ms=time_spent,
        )
    except JudgmentRejected as error:
        return _after_action(request, project, error=str(error))
    return _after_action(request, project)


@login_required
@require_POST
def skip(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    comparison_skip(
        comparison=comparison, annotator=request.user, reason=request.POST.get("reason", "")
    )
    return _after_action(request, project)
