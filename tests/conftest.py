from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from annotate.models import Project, Role
from annotate.services.projects import membership_set, project_create
from annotate.services.prompts import PromptInput, prompts_create

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = Path(os.environ.get("PREFLOOP_MODELS_DIR", REPO / "data" / "models"))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS_DIR


@pytest.fixture(scope="session")
def smollm2_path(models_dir: Path) -> str:
    """The packaged SmolLM2 checkpoint, converted to safetensors once per machine."""
    from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve

    return model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=models_dir)


def _tiny_llama(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str, hidden: int) -> str:
    """A random 2-layer Llama with SmolLM2's tokenizer: seconds to train, nonsense to read."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
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
    path = tmp_path_factory.mktemp(f"tiny-llama-{hidden}")
    LlamaForCausalLM(config).save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return str(path)


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
    def make(username: str, *, superuser: bool = False) -> User:
        if superuser:
            return User.objects.create_superuser(username=username, password="pw-" + username)
        return User.objects.create_user(username=username, password="pw-" + username)

    return make


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
    project = project_create(
        name="Test project",
        slug="test",
        guidelines="# Be helpful\nPrefer **correct** answers.",
        created_by=lead,
        overlap=1,
    )
    membership_set(project=project, user=annotator, role=Role.ANNOTATOR)
    prompts_create(
        project=project,
        rows=[PromptInput(messages=f"Question number {i}: what is {i} + {i}?") for i in range(6)]
        + [PromptInput(messages=f"Held-out question {i}?", split="eval") for i in range(3)],
    )
    return project
