"""Every URL of the project, for every role, against one table of expected status codes.

A URL without a row fails `test_it_has_a_row_for_every_url`: whoever adds a page decides who
may reach it. The objects in each URL belong to the project in that URL, so the members of the
other project fail on membership alone, never on a missing object. Empty POST bodies keep every
allowed POST at a form error or a harmless redirect; no request may dispatch a job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from alignment.models import GenerationJob, Round, TrainingRun
from alignment.services.judges import judge_add
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import round_start
from alignment.services.training import training_run_start
from alignment.services.training_settings import TrainingSettings
from annotate.coverage import coverage_refresh
from annotate.services.judgments import judgment_submit
from tests.factories import (
    client_make,
    comparison_make,
    embed_bag_of_words,
    project_make,
    user_make,
)

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Redirect:
    """A 302 whose Location starts with the URL named `name` (of the project when `slug`)."""

    name: str
    slug: bool = False


LOGIN = Redirect("login")
ADMIN_LOGIN = Redirect("admin:login")
TO_ANNOTATE = Redirect("annotate", slug=True)
TO_COVERAGE = Redirect("coverage", slug=True)

Expected = int | Redirect

ROLES = (
    "anonymous",
    "annotator",
    "annotator_other",  # annotator of the other project only
    "reviewer",
    "lead",
    "lead_other",  # lead of the other project only
    "superuser",
)

# One row per URL name: for each method, the status per role in the order of ROLES. A method
# a view does not accept is still listed (405) so that a view which starts accepting it fails
# here until its access is decided. A form error is 422 everywhere.
# fmt: off
TABLE: dict[str, dict[str, tuple[Expected, ...]]] = {
    #                          anon         ann          ann_o        rev          lead         lead_o       super
    "admin:index": {   # the admin's own views are Django's; only its gate is ours to check
        "GET":  (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 200),
    },
    # Open to all, like an uptime monitor: no project's data, only counts (503: no worker here).
    "health": {
        "GET":  (503,         503,         503,         503,         503,         503,         503),
        "POST": (405,         405,         405,         405,         405,         405,         405),
    },
    "health_web": {
        "GET":  (200,         200,         200,         200,         200,         200,         200),
        "POST": (405,         405,         405,         405,         405,         405,         405),
    },
    "login": {
        "GET":  (200,         200,         200,         200,         200,         200,         200),
        "POST": (200,         200,         200,         200,         200,         200,         200),
    },
    "logout": {
        "GET":  (405,         405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       LOGIN,       LOGIN,       LOGIN,       LOGIN,       LOGIN,       LOGIN),
    },
    "home": {
        "GET":  (LOGIN,       200,         200,         200,         200,         200,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    # Annotators are sent to work instead of the overview (tests/annotate/test_views.py).
    "project_overview": {
        "GET":  (LOGIN,       TO_ANNOTATE, 404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "annotate": {
        "GET":  (LOGIN,       200,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "judge": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       422,         404,         422,         422,         404,         422),
    },
    "skip": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       422,         404,         422,         422,         404,         422),
    },
    "undo": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       422,         404,         422,         422,         404,         422),
    },
    "guidelines_acknowledge": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       TO_ANNOTATE, 404,         TO_ANNOTATE, TO_ANNOTATE, 404,         TO_ANNOTATE),
    },
    "my_judgments": {
        "GET":  (LOGIN,       200,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    # judgment_id is the lead's own judgment: nobody else's to open.
    "my_judgment": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         404),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    # No skip to take back: refused with its reason.
    "unskip": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       422,         404,         422,         422,         404,         422),
    },
    "prompt_list": {
        "GET":  (LOGIN,       404,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "prompt_detail": {
        "GET":  (LOGIN,       404,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "guidelines": {
        "GET":  (LOGIN,       200,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         422,         404,         422),
    },
    "quality": {
        "GET":  (LOGIN,       404,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "coverage": {
        "GET":  (LOGIN,       404,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         TO_COVERAGE, TO_COVERAGE, 404,         TO_COVERAGE),
    },
    "review_list": {
        "GET":  (LOGIN,       404,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "review_detail": {
        "GET":  (LOGIN,       404,         404,         200,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "review_adjudicate": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       404,         404,         422,         422,         404,         422),
    },
    "review_send_back": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       404,         404,         302,         302,         404,         302),
    },
    # An empty gold choice is valid ("not a gold item"), hence a redirect for leads.
    "review_gold": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       404,         404,         404,         302,         404,         302),
    },
    "export": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "data_import": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         422,         404,         422),
    },
    "project_settings": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         422,         404,         422),
    },
    "members": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         422,         404,         422),
    },
    "round_list": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    # An empty body is a form error: the round (and its generation jobs) is never created.
    "round_new": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         422,         404,         422),
    },
    "round_detail": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "training_run_list": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "lineage_comparison": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "lineage_run": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "lineage_version": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    # A POST signs the round off (a record, no job).
    "round_review": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         302,         404,         302),
    },
    # An empty body is a form error: no snapshot, no run, no training job.
    "training_run_new": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         422,         404,         422),
    },
    "training_run_detail": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "training_run_cancel": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       404,         404,         404,         302,         404,         302),
    },
    # An empty body names the problem and changes nothing (a redirect with the message).
    "training_run_contradictions_send_back": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       404,         404,         404,         302,         404,         302),
    },
    "training_run_metrics": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "leaderboard": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    "model_version_list": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       405,         405,         405,         405,         405,         405),
    },
    # An empty body is a form error; a run without its mode names the problem in a redirect's message.
    "judge_list": {
        "GET":  (LOGIN,       404,         404,         404,         200,         404,         200),
        "POST": (LOGIN,       404,         404,         404,         422,         404,         422),
    },
    "judge_run": {
        "GET":  (LOGIN,       405,         405,         405,         405,         405,         405),
        "POST": (LOGIN,       404,         404,         404,         302,         404,         302),
    },
    # The API: the same gates as the pages, 401 without credentials. POSTs send an empty JSON
    # object, a validation error (400) wherever a body is asked for.
    "api:token": {  # username and password for a token: open to all, like the login page
        "GET":  (405,         405,         405,         405,         405,         405,         405),
        "POST": (400,         400,         400,         400,         400,         400,         400),
    },
    "api:schema": {
        "GET":  (200,         200,         200,         200,         200,         200,         200),
        "POST": (405,         405,         405,         405,         405,         405,         405),
    },
    "api:docs": {
        "GET":  (200,         200,         200,         200,         200,         200,         200),
        "POST": (405,         405,         405,         405,         405,         405,         405),
    },
    "api:projects": {
        "GET":  (401,         200,         200,         200,         200,         200,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:project": {
        "GET":  (401,         200,         404,         200,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:prompts": {
        "GET":  (401,         404,         404,         200,         200,         404,         200),
        "POST": (401,         404,         404,         404,         400,         404,         400),
    },
    "api:comparisons": {
        "GET":  (401,         404,         404,         200,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:comparison": {
        "GET":  (401,         404,         404,         200,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:judgment_create": {
        "GET":  (401,         405,         405,         405,         405,         405,         405),
        "POST": (401,         400,         404,         400,         400,         404,         400),
    },
    "api:skip": {
        "GET":  (401,         405,         405,         405,         405,         405,         405),
        "POST": (401,         400,         404,         400,         400,         404,         400),
    },
    "api:assignment": {
        "GET":  (401,         200,         404,         200,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:judgments": {
        "GET":  (401,         200,         404,         200,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    # The judgment in the URL is the lead's: only its author may take it back.
    "api:judgment_undo": {
        "GET":  (401,         405,         405,         405,         405,         405,         405),
        "POST": (401,         422,         404,         422,         200,         404,         422),
    },
    "api:guidelines": {
        "GET":  (401,         200,         404,         200,         200,         404,         200),
        "POST": (401,         400,         404,         400,         400,         404,         400),
    },
    "api:export": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:export_card": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:coverage": {
        "GET":  (401,         404,         404,         200,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:leaderboard": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:training_run_cancel": {
        "GET":  (401,         405,         405,         405,         405,         405,         405),
        "POST": (401,         404,         404,         404,         200,         404,         200),
    },
    "api:model_versions": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:rounds": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         404,         404,         404,         400,         404,         400),
    },
    "api:round": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
    "api:training_runs": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         404,         404,         404,         400,         404,         400),
    },
    "api:training_run": {
        "GET":  (401,         404,         404,         404,         200,         404,         200),
        "POST": (401,         405,         405,         405,         405,         405,         405),
    },
}
# fmt: on

# Static and media serving (present only when config/urls.py adds them) are no pages of ours.
SERVE_VIEWS = {"django.views.static.serve", "django.contrib.staticfiles.views.serve"}


@dataclass(frozen=True)
class Route:
    name: str
    params: tuple[str, ...]


def _params(resolver_or_pattern: URLResolver | URLPattern) -> tuple[str, ...]:
    return tuple(getattr(resolver_or_pattern.pattern, "converters", {}))


def _walk(
    patterns: list[URLResolver | URLPattern], namespace: str = "", params: tuple[str, ...] = ()
) -> Iterator[Route]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, inner, params + _params(entry))
            continue
        if f"{entry.callback.__module__}.{entry.callback.__name__}" in SERVE_VIEWS:
            continue
        name = f"{namespace}{entry.name or f'<unnamed {entry.pattern}>'}"
        if name.startswith("admin:") and name != "admin:index":
            continue
        yield Route(name=name, params=params + _params(entry))


ROUTES = {route.name: route for route in _walk(get_resolver().url_patterns)}


def test_it_has_a_row_for_every_url() -> None:
    missing = sorted(set(ROUTES) - set(TABLE))
    stale = sorted(set(TABLE) - set(ROUTES))
    assert not missing, f"URLs without a row in TABLE (decide their access): {missing}"
    assert not stale, f"Rows in TABLE for URLs that no longer exist: {stale}"


def test_it_gives_every_row_one_status_per_role() -> None:
    wrong = [
        f"{name} {method}"
        for name, row in TABLE.items()
        for method, statuses in row.items()
        if len(statuses) != len(ROLES) or method not in ("GET", "POST")
    ]
    assert not wrong, f"Rows that do not list exactly one status per role: {wrong}"


# Fixture: one project with every object a URL names, and a second one for the outsiders -----


@dataclass
class World:
    slug: str
    users: dict[str, User | None]
    url_kwargs: dict[str, Any]


def _world_build() -> World:
    # Users without a password: hashing seven passwords would dominate the run.
    users = {
        role: user_make(role, login=False)
        for role in ROLES
        if role not in ("anonymous", "superuser")
    }
    superuser = user_make("root", superuser=True, login=False)
    project = project_make(
        "access",
        name="Access project",
        guidelines="# Be helpful",
        created_by=users["lead"],
        annotators=[users["annotator"]],
        reviewers=[users["reviewer"]],
        prompts=[f"Question {i}: what is {i} + {i}?" for i in range(4)],
        overlap=1,
    )
    project_make(
        "other",
        name="Other project",
        guidelines="# Other",
        created_by=users["lead_other"],
        annotators=[users["annotator_other"]],
    )
    prompts = list(project.prompts.order_by("id"))
    comparison = comparison_make(prompts[0], seed=0)
    # A judged pair (overlap 1) gives the training run a snapshot to be created from.
    judged = comparison_make(prompts[1], seed=1)
    judged_by_lead = judgment_submit(comparison_id=judged.pk, annotator=users["lead"], choice="a")
    base = model_version_base_ensure(project=project)
    round_ = round_start(
        project=project,
        policy=base,
        train_prompts=prompts[2:4],
        created_by=users["lead"],
        dispatch=False,
    )
    run = training_run_start(
        project=project,
        base_version=base,
        training=TrainingSettings(),
        created_by=users["lead"],
        dispatch=False,
    )
    judge = judge_add(project=project, name="Rule", kind="rule", rule="shorter")
    # Fresh statistics: the coverage page asks a worker for them only when they are stale.
    coverage_refresh(project=project, embed=embed_bag_of_words)
    return World(
        slug=project.slug,
        users={**users, "anonymous": None, "superuser": superuser},
        url_kwargs={
            "slug": project.slug,
            "comparison_id": comparison.pk,
            "number": round_.number,
            "run_id": run.pk,
            "judgment_id": judged_by_lead.pk,
            "judge_id": judge.pk,
            "prompt_id": prompts[0].pk,
            "version_id": base.pk,
        },
    )


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    """Built once for the module inside a transaction rolled back at its end; each case runs
    in its own savepoint within it (pytest-django's `db`), so no case sees another's writes."""
    outer = transaction.atomic()
    with django_db_blocker.unblock():
        outer.__enter__()
        built = _world_build()
    try:
        yield built
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


def _jobs_count() -> tuple[int, int, int]:
    return Round.objects.count(), GenerationJob.objects.count(), TrainingRun.objects.count()


CASES = [
    pytest.param(name, role, method, expected, id=f"{name}-{role}-{method}")
    for name, row in TABLE.items()
    for method, statuses in row.items()
    for role, expected in zip(ROLES, statuses, strict=False)
]


@pytest.mark.parametrize(("name", "role", "method", "expected"), CASES)
def test_it_decides_access_as_the_table_says(
    world: World,
    django_capture_on_commit_callbacks: Callable[..., Any],
    name: str,
    role: str,
    method: str,
    expected: Expected,
) -> None:
    route = ROUTES.get(name)
    assert route is not None, f"{name} is in TABLE but not among the URL patterns"
    unknown = [param for param in route.params if param not in world.url_kwargs]
    assert not unknown, f"{name}: no object fills the URL kwargs {unknown}; add one to `world`"
    url = reverse(name, kwargs={param: world.url_kwargs[param] for param in route.params})
    user = world.users[role]
    client = client_make(user)
    before = _jobs_count()

    with django_capture_on_commit_callbacks() as dispatched:
        if method == "GET":
            response = client.get(url)
        elif name.startswith("api:"):
            response = client.post(url, {}, content_type="application/json")
        else:
            response = client.post(url, {})

    status = expected if isinstance(expected, int) else 302
    assert response.status_code == status, f"{method} {url} as {role}"
    location = response.get("Location", "")
    if isinstance(expected, Redirect):
        kwargs = {"slug": world.slug} if expected.slug else {}
        assert location.startswith(reverse(expected.name, kwargs=kwargs)), location
    elif status == 302 and user is not None:
        assert not location.startswith(reverse("login")), f"a member sent to login: {location}"
    assert not dispatched, "a request dispatched a job"
    assert _jobs_count() == before, "a request created a round, generation job or training run"
