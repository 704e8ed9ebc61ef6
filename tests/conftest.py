from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from annotate.models import Project
from annotate.services.prompts import PromptInput
from tests.factories import MODELS_DIR, project_make, tiny_llama_make, user_make

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing() -> Iterator[None]:
    """MD5 for the tests' passwords, as Django's testing docs advise: PBKDF2 takes 0.3 s a
    hash here, on purpose, and the suite hashes at every user it makes and every login it
    types. tests/test_deployment.py runs the production settings, PBKDF2 included."""
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(autouse=True)
def _cache_cleared() -> None:
    """Each test starts with an empty cache: API throttles count per user id, and ids come
    again after a rolled-back test (SQLite)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS_DIR


@pytest.fixture(scope="session")
def smollm2_path(models_dir: Path) -> str:
    """The packaged SmolLM2 checkpoint, converted to safetensors once per machine."""
    from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve

    return model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=models_dir)


def _tiny_llama(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str, hidden: int) -> str:
    path = tmp_path_factory.mktemp(f"tiny-llama-{hidden}")
    return str(tiny_llama_make(path, smollm2_path, hidden=hidden))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> str:
    return _tiny_llama(tmp_path_factory, smollm2_path, hidden=32)


@pytest.fixture(scope="session")
def tiny_model_dir_4bit(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> str:
    """The tiny Llama at hidden size 64: bitsandbytes' 4-bit CPU kernel for inference (eval
    mode, no grad: how pairs are scored) needs layers at least one 64-weight block wide."""
    return _tiny_llama(tmp_path_factory, smollm2_path, hidden=64)


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    """tests.factories.user_make, for a test that needs users of its own."""
    return user_make


@pytest.fixture
def lead(make_user: Callable[..., User]) -> User:
    return make_user("lead")


@pytest.fixture
def annotator(make_user: Callable[..., User]) -> User:
    return make_user("ann")


@pytest.fixture
def outsider(make_user: Callable[..., User]) -> User:
    return make_user("outsider")


@pytest.fixture
def project(lead: User, annotator: User) -> Project:
    """Led by `lead`, judged by `annotator` (overlap 1): six training prompts, three held out."""
    return project_make(
        "test",
        name="Test project",
        guidelines="# Be helpful\nPrefer **correct** answers.",
        created_by=lead,
        annotators=[annotator],
        prompts=[f"Question number {i}: what is {i} + {i}?" for i in range(6)]
        + [PromptInput(messages=f"Held-out question {i}?", split="eval") for i in range(3)],
        overlap=1,
    )


@pytest.fixture
def tiny_settings(settings: Any, tmp_path: Path) -> Any:
    """Training on the CPU in full precision (the tiny model), artifacts under tmp_path."""
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TRAINING_QUANTIZE_4BIT = False
    return settings


@pytest.fixture
def tiny_project(project: Project, tiny_model_dir: str, tiny_settings: Any) -> Project:
    """The project on the tiny random model, full precision, artifacts under tmp_path."""
    project.base_model = str(tiny_model_dir)
    project.save(update_fields=["base_model"])
    return project
