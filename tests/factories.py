"""The tests' shared builders, in one place: each makes its thing the way the app does, through
the services, so what a test starts from is what a user's clicks would have made.

Builders are named `<thing>_make`; test modules import them from here and never from each
other. Fixtures built on them (`project`, `tiny_project`, `make_user`, ...) are in
tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Iterable, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from django.contrib.auth.models import User
from django.test import Client

from alignment.engine.training import PreferenceExample, TrainingConfig
from alignment.models import GenerationJob, ModelVersion, Round, TrainingRun
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import SamplingSettings, round_prompts_choose, round_start
from alignment.services.training import TrainingPlan, training_run_start
from alignment.services.training_settings import TrainingSettings
from alignment.workers.generation import generation_job_execute
from alignment.workers.training import training_run_execute
from annotate.diversity import words
from annotate.models import Comparison, Policy, Project, Prompt, Role
from annotate.services.comparisons import comparison_create
from annotate.services.judgments import judgment_submit
from annotate.services.projects import membership_set, project_create
from annotate.services.prompts import (
    PromptInput,
    ResponseInput,
    policy_create,
    prompts_create,
    responses_create,
)
from annotate.services.rankings import ranking_create
from annotate.services.ratings import rating_create

# The checkout, and where the packaged models are converted to (what a worker is told too).
REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = Path(os.environ.get("PREFLOOP_MODELS_DIR", REPO / "data" / "models"))

# A round's sampling on the tiny model: a few tokens, so generating takes seconds.
SAMPLING = SamplingSettings(max_new_tokens=10, temperature=1.0, batch_size=4)

# The new-run form's fields, filled in as a lead would (the base version is the caller's).
RUN_FORM = {
    "loss_type": "sigmoid",
    "beta": "0.1",
    "learning_rate": "0.0005",
    "epochs": "1",
    "batch_size": "2",
    "gradient_accumulation_steps": "1",
    "lora_r": "8",
    "lora_alpha": "16",
    "max_length": "256",
    "seed": "0",
    "rounds": "",
    "min_agreement": "0",
}


# People and projects ---------------------------------------------------------------------------


def user_make(username: str, *, superuser: bool = False, login: bool = True) -> User:
    """A user with the password `pw-<username>` (what the login tests type), or, with
    login=False, none at all: hashing a password takes a while, which adds up in a loop."""
    password = "pw-" + username if login else None
    if superuser:
        return User.objects.create_superuser(username=username, password=password)
    return User.objects.create_user(username=username, password=password)


def member_make(
    project: Project, username: str, *, role: str = Role.ANNOTATOR, login: bool = True
) -> User:
    """A new user with a role in the project (an annotator unless told)."""
    user = user_make(username, login=login)
    membership_set(project=project, user=user, role=role)
    return user


def project_make(
    slug: str,
    *,
    name: str | None = None,
    guidelines: str = "Prefer correct answers.",
    created_by: User | None = None,
    annotators: Iterable[User] = (),
    reviewers: Iterable[User] = (),
    prompts: Iterable[str | PromptInput] = (),
    **settings: Any,
) -> Project:
    """A project (led by `created_by`, if given) with its members and its prompts; a prompt
    given as text is a training prompt."""
    project = project_create(
        name=name or slug.title(),
        slug=slug,
        guidelines=guidelines,
        created_by=created_by,
        **settings,
    )
    for role, users in ((Role.ANNOTATOR, annotators), (Role.REVIEWER, reviewers)):
        for user in users:
            membership_set(project=project, user=user, role=role)
    rows = [row if isinstance(row, PromptInput) else PromptInput(messages=row) for row in prompts]
    if rows:
        prompts_create(project=project, rows=rows)
    return project


def client_make(user: User | None = None) -> Client:
    """A test client logged in as `user` (anonymous without one)."""
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


# Comparisons and judgments ---------------------------------------------------------------------


def policy_for(project: Project, name: str = "imported") -> Policy:
    return Policy.objects.filter(project=project, name=name).first() or policy_create(
        project=project, name=name, kind="external"
    )


def comparison_make(
    prompt: Prompt,
    texts: tuple[str, str] = ("Short answer.", "A much longer answer with detail."),
    *,
    round_number: int = 1,
    purpose: str = "train",
    seed: int = 0,
    policy: Policy | None = None,
    judged_by: User | None = None,
    choice: str = "a",
) -> Comparison:
    """Two responses to `prompt` and the comparison of them; judged `choice` by `judged_by`
    when one is given."""
    policy = policy or policy_for(prompt.project)
    first, second = responses_create(
        policy=policy,
        rows=[
            ResponseInput(prompt_id=prompt.pk, text=text, generation_params={}) for text in texts
        ],
    )
    comparison = comparison_create(
        response_a=first,
        response_b=second,
        round_number=round_number,
        purpose=purpose,
        rng=random.Random(seed),
    )
    if judged_by is not None:
        judgment_submit(comparison_id=comparison.pk, annotator=judged_by, choice=choice)
    return comparison


def ranking_make(
    prompt: Prompt,
    texts: Sequence[str] = (
        "Short.",
        "A little longer.",
        "Longer than both of those.",
        "Long " * 9,
    ),
    *,
    round_number: int = 1,
    policy: Policy | None = None,
) -> Comparison:
    """Responses to `prompt` (one per text) and the ranking of them, in that order."""
    responses = responses_create(
        policy=policy or policy_for(prompt.project),
        rows=[
            ResponseInput(prompt_id=prompt.pk, text=text, generation_params={}) for text in texts
        ],
    )
    return ranking_create(responses=responses, round_number=round_number)


def ratings_make(
    prompt: Prompt,
    texts: Sequence[str] = ("A fine answer.", "A poor one."),
    *,
    round_number: int = 1,
    gold_choice: str = "",
) -> list[Comparison]:
    """Responses to `prompt` (one per text) and a rating of each, in that order."""
    responses = responses_create(
        policy=policy_for(prompt.project),
        rows=[
            ResponseInput(prompt_id=prompt.pk, text=text, generation_params={}) for text in texts
        ],
    )
    return [
        rating_create(response=response, round_number=round_number, gold_choice=gold_choice)
        for response in responses
    ]


def comparisons_make(project: Project, count: int, *, round_number: int = 1) -> list[Comparison]:
    """`count` comparisons of the default texts, one per training prompt in turn (seed i)."""
    prompts = list(project.prompts.filter(split="train"))
    return [
        comparison_make(prompts[i % len(prompts)], round_number=round_number, seed=i)
        for i in range(count)
    ]


def judgments_make(project: Project, annotator: User, *, choice: str = "a") -> list[Comparison]:
    """`annotator` judges `choice` on every comparison of the project nobody judged yet; the
    comparisons so judged, oldest first."""
    comparisons = list(Comparison.objects.filter(project=project, judgments__isnull=True))
    for comparison in comparisons:
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice=choice)
    return comparisons


# Rounds and training runs ----------------------------------------------------------------------


def round_make(
    project: Project,
    *,
    policy: ModelVersion | None = None,
    prompts: int | Sequence[Prompt] = 4,
    samples_per_prompt: int = 2,
    sampling: SamplingSettings = SAMPLING,
    dispatch: bool = False,
    **options: Any,
) -> Round:
    """A round of `policy` (the base unless told) on `prompts` training prompts (a number:
    chosen as the lead's form would), queued and not dispatched unless told."""
    train_prompts = (
        round_prompts_choose(project=project, count=prompts)
        if isinstance(prompts, int)
        else prompts
    )
    return round_start(
        project=project,
        policy=policy or model_version_base_ensure(project=project),
        train_prompts=train_prompts,
        samples_per_prompt=samples_per_prompt,
        sampling=sampling,
        dispatch=dispatch,
        **options,
    )


def generation_job_make(project: Project, **round_options: Any) -> GenerationJob:
    """The generation job of a new on-policy round (see round_make), not yet run."""
    return round_make(project, **round_options).generation_jobs.get()


def judged_round_make(
    project: Project, annotator: User, *, choice: str = "a", **round_options: Any
) -> list[Comparison]:
    """A round generated in-process (see round_make; the project wants a model, as
    `tiny_project` has) and every new comparison judged `choice` by `annotator`."""
    generation_job_execute(job_id=generation_job_make(project, **round_options).pk)
    return judgments_make(project, annotator, choice=choice)


def training_run_make(
    project: Project,
    *,
    base_version: ModelVersion | None = None,
    plan: TrainingPlan | None = None,
    training: TrainingSettings | None = None,
    execute: bool = False,
    **settings: Any,
) -> TrainingRun:
    """A training run of `base_version` (the base unless told) on the pairs judged so far,
    with `training` or TrainingSettings(**settings); queued, or with execute=True run
    in-process to its end and read back."""
    run = training_run_start(
        project=project,
        base_version=base_version or model_version_base_ensure(project=project),
        plan=plan,
        # One pass a step unless told: the tests count steps by batch size.
        training=training or TrainingSettings(**{"gradient_accumulation_steps": 1, **settings}),
        dispatch=False,
    )
    if execute:
        training_run_execute(run_id=run.pk)
        run = TrainingRun.objects.get(pk=run.pk)
    return run


# The engine on its own (no database) -----------------------------------------------------------


def tiny_llama_make(path: Path, tokenizer_path: str, *, hidden: int) -> Path:
    """A random 2-layer Llama at `path` with the tokenizer at `tokenizer_path` (SmolLM2's):
    seconds to train, nonsense to read."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


def preference_examples_make(count: int) -> list[PreferenceExample]:
    """`count` pairs in which the short answer is preferred to the long one."""
    return [
        PreferenceExample(
            prompt=({"role": "user", "content": f"Say something about number {i}."},),
            chosen=f"Number {i} is fine.",
            rejected=f"Number {i} is a number that goes on and on and on, at great length.",
        )
        for i in range(count)
    ]


def training_config_make(model_dir: str, output_dir: Path, **overrides: object) -> TrainingConfig:
    """A full-precision LoRA run on `model_dir` (the tiny model: a high learning rate, short
    sequences), its adapter written under `output_dir`."""
    base = TrainingConfig(
        model=model_dir,
        models_dir="unused",
        output_dir=str(output_dir),
        quantize_4bit=False,
        learning_rate=1e-2,
        epochs=3,
        batch_size=2,
        gradient_accumulation_steps=1,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        max_length=64,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


# Stand-ins and checks --------------------------------------------------------------------------


def embed_bag_of_words(texts: Sequence[str]) -> np.ndarray:
    """A deterministic stand-in for the packaged embedder: a hashed bag of words, so texts
    sharing words get similar rows (the real model takes seconds to load)."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in words(text):
            out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
    return out


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def html_elements(html: str) -> list[tuple[str, dict[str, str]]]:
    """Every start tag of `html` with its attributes, in order."""
    parser = _Elements()
    parser.feed(html)
    return parser.elements


def assert_inert(html: str) -> None:
    """Nothing in `html` runs, loads, submits or calls out: no active tags, no event or htmx
    attributes, links to the web and mail only."""
    for tag, attrs in html_elements(html):
        assert tag not in {
            "script",
            "iframe",
            "img",
            "object",
            "embed",
            "style",
            "form",
            "button",
            "input",
        }
        for name, value in attrs.items():
            assert not name.startswith(("on", "hx-", "data-")), name
            if name in {"href", "src"}:
                assert value.startswith(("http://", "https://", "mailto:")), value
