from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Nothing may come from the Hugging Face Hub: models are packaged or built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: uses the real packaged model for minutes")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return Path(os.environ.get("PREFLOOP_MODELS_DIR", REPO_ROOT / "data" / "models"))


@pytest.fixture(scope="session")
def smollm2_path(models_dir: Path) -> str:
    """The packaged SmolLM2 converted to safetensors, once per machine."""
    from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve

    return model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=models_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> str:
    """A random 2-layer Llama with SmolLM2's tokenizer: seconds to train, nonsense to read."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
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
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return str(path)
