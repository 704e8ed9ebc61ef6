"""Model judges at request time: adding one (a project member of kind "model"), changing what
its answers do, and queueing a pass of it for a worker."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.contrib.auth.models import User
from django.db import transaction
from django.utils.text import slugify

from alignment.engine.rules import rule_load
from alignment.models import Judge, JudgeJob, JudgeKind, JudgeMode
from annotate.models import MemberKind, Membership, Project, Role
from core.errors import ValidationFailed

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_REQUESTS_PER_MINUTE = 10_000
MAX_TIMEOUT_SECONDS = 600
MAX_RETRIES = 10


def judge_add(
    *,
    project: Project,
    name: str,
    kind: str,
    mode: str = JudgeMode.SUGGEST,
    rule: str = "",
    base_url: str = "",
    model_name: str = "",
    api_key_env: str = "",
    requests_per_minute: int = 60,
    timeout_seconds: int = 60,
    max_retries: int = 4,
    usd_per_million_input: float = 0.0,
    usd_per_million_output: float = 0.0,
    created_by: User | None = None,
) -> Judge:
    """Add a model judge to the project, with the account it judges as (it cannot log in)."""
    judge = Judge(
        project=project,
        name=name.strip(),
        kind=kind,
        mode=mode,
        rule=rule.strip(),
        base_url=base_url.strip(),
        model_name=model_name.strip(),
        api_key_env=api_key_env.strip(),
        requests_per_minute=requests_per_minute,
        timeout_seconds=timeout_seconds,
        max_retries=max_retries,
        usd_per_million_input=usd_per_million_input,
        usd_per_million_output=usd_per_million_output,
        created_by=created_by,
    )
    judge_validate(judge)
    if Judge.objects.filter(project=project, name=judge.name).exists():
        raise ValidationFailed(f"This project already has a judge named {judge.name!r}.")
    with transaction.atomic():
        username = f"judge-{project.pk}-{slugify(judge.name)[:100] or 'model'}"
        if User.objects.filter(username=username).exists():
            username = f"{username}-{User.objects.count()}"
        user = User(username=username, first_name=judge.name[:150])
        user.set_unusable_password()
        user.save()
        Membership.objects.create(
            project=project, user=user, role=Role.ANNOTATOR, kind=MemberKind.MODEL
        )
        judge.user = user
        judge.save()
    return judge


def judge_validate(judge: Judge) -> None:
    """Refuse a judge that could not work, naming the field."""
    if not judge.name:
        raise ValidationFailed("name: give the judge a name.")
    if len(judge.name) > 60:
        raise ValidationFailed("name: at most 60 characters.")
    if judge.kind not in JudgeKind.values:
        raise ValidationFailed(f"kind: one of {', '.join(JudgeKind.values)}.")
    if judge.mode not in JudgeMode.values:
        raise ValidationFailed(f"mode: one of {', '.join(JudgeMode.values)}.")
    if judge.kind == JudgeKind.RULE:
        if not judge.rule:
            raise ValidationFailed(
                "rule: a rule judge needs a rule (a builtin or module:function)."
            )
        try:
            rule_load(judge.rule)
        except ValueError as error:
            raise ValidationFailed(f"rule: {error}") from None
    if judge.kind == JudgeKind.LLM:
        url = urlsplit(judge.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValidationFailed(
                "base_url: an LLM judge needs its endpoint's base URL, e.g. "
                "http://localhost:8000/v1 (requests go to {base_url}/chat/completions)."
            )
        if not judge.model_name:
            raise ValidationFailed("model_name: the model the endpoint serves, as it names it.")
        if judge.api_key_env and not _ENV_NAME.match(judge.api_key_env):
            raise ValidationFailed(
                "api_key_env: the name of an environment variable (letters, digits, _), "
                "not the key itself."
            )
    if not 1 <= judge.requests_per_minute <= MAX_REQUESTS_PER_MINUTE:
        raise ValidationFailed(f"requests_per_minute: 1 to {MAX_REQUESTS_PER_MINUTE}.")
    if not 1 <= judge.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise ValidationFailed(f"timeout_seconds: 1 to {MAX_TIMEOUT_SECONDS}.")
    if not 0 <= judge.max_retries <= MAX_RETRIES:
        raise ValidationFailed(f"max_retries: 0 to {MAX_RETRIES}.")
    if judge.usd_per_million_input < 0 or judge.usd_per_million_output < 0:
        raise ValidationFailed("Prices per million tokens cannot be negative.")


def judge_run_start(
    *,
    judge: Judge,
    mode: str = "",
    round_number: int | None = None,
    limit: int | None = None,
    created_by: User | None = None,
    dispatch: bool = True,
) -> JudgeJob:
    """Queue one pass of the judge over what its mode lets it answer; one pass at a time.
    `mode`, when given, becomes the judge's mode (what its answers do from now on; answers
    given already stay what they were). The pass records the mode it ran in."""
    if mode and mode not in JudgeMode.values:
        raise ValidationFailed(f"mode: one of {', '.join(JudgeMode.values)}.")
    if limit is not None and limit < 1:
        raise ValidationFailed("limit: at least 1, or none for every comparison.")
    with transaction.atomic():
        Judge.objects.select_for_update().get(pk=judge.pk)
        if judge.jobs.filter(status__in=["queued", "running"]).exists():
            raise ValidationFailed(f"{judge.name} is already running; wait for it to finish.")
        if mode and mode != judge.mode:
            judge.mode = mode
            judge.save(update_fields=["mode"])
        job = JudgeJob.objects.create(
            project=judge.project,
            judge=judge,
            mode=judge.mode,
            round_number=round_number,
            limit=limit,
            created_by=created_by,
        )
        if dispatch:
            judge_job_dispatch(job.pk)
    return job


def judge_job_dispatch(job_id: int) -> None:
    from alignment.tasks import judge_job_run

    transaction.on_commit(lambda: judge_job_run.delay(job_id))
