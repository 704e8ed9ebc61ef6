"""The vLLM backend's side of the contract: what it asks of vLLM and what it returns.

vLLM needs a GPU and is not installed here; these tests put a stand-in `vllm` module in its
place that records the calls, so they check our translation (chat templating, n samples,
seeds per batch, the LoRA request, token counts and finish reasons), not vLLM itself. The
real engine is exercised by bench/gpu_check.sh on a GPU worker with vLLM installed.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from alignment.engine.generation import GenerationConfig, GenerationProgress
from alignment.engine.vllm_backend import NOT_INSTALLED, generate_vllm


class _Completion:
    def __init__(self, text: str, tokens: int, finish: str) -> None:
        self.text, self.token_ids, self.finish_reason = text, list(range(tokens)), finish


class _Output:
    def __init__(self, prompt: str, n: int) -> None:
        self.prompt_token_ids = list(range(len(prompt.split())))
        self.outputs = [
            _Completion(f" answer {i} to {prompt[-12:]!r} ", 5 + i, "stop" if i % 2 else "length")
            for i in range(n)
        ]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    calls: dict[str, Any] = {"generate": []}

    class LLM:
        def __init__(self, model: str, **kwargs: Any) -> None:
            calls["llm"] = {"model": model, **kwargs}

        def get_tokenizer(self) -> Any:
            return AutoTokenizer.from_pretrained(tiny_model_dir)

        def generate(self, texts: list[str], params: Any, **kwargs: Any) -> list[_Output]:
            calls["generate"].append({"texts": texts, "params": params, **kwargs})
            return [_Output(text, params.n) for text in texts]

    class SamplingParams:
        def __init__(self, **kwargs: Any) -> None:
            self.__dict__.update(kwargs)

    class LoRARequest:
        def __init__(self, name: str, lora_id: int, path: str) -> None:
            self.name, self.lora_id, self.path = name, lora_id, path

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM  # type: ignore[attr-defined]
    vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return calls


def _adapter(tmp_path: Path) -> Path:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    return adapter


def test_it_asks_vllm_for_n_samples_per_prompt_with_the_policys_lora(
    fake_vllm: dict[str, Any], tiny_model_dir: str, tmp_path: Path
) -> None:
    import hashlib

    adapter = _adapter(tmp_path)
    config = GenerationConfig(
        model=tiny_model_dir,
        models_dir="unused",
        adapter=str(adapter),
        adapter_sha256=hashlib.sha256(b"weights").hexdigest(),
        samples_per_prompt=2,
        max_new_tokens=7,
        seed=10,
        batch_size=2,
    )
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(3)]
    progress: list[GenerationProgress] = []
    samples = generate_vllm(config, prompts, on_progress=progress.append)

    llm = fake_vllm["llm"]
    assert llm["model"] == tiny_model_dir and llm["enable_lora"] and llm["max_lora_rank"] == 16
    batches = fake_vllm["generate"]
    assert [len(b["texts"]) for b in batches] == [2, 1]
    assert [b["params"].seed for b in batches] == [10, 11]  # seed + batch, as transformers
    assert batches[0]["params"].n == 2 and batches[0]["params"].max_tokens == 7
    assert batches[0]["lora_request"].path == str(adapter)
    assert "Question 0?" in batches[0]["texts"][0] and "assistant" in batches[0]["texts"][0]
    assert [(s.prompt_index, s.sample_index) for s in samples] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    assert samples[0].finish_reason == "length" and samples[0].completion_tokens == 5
    assert (
        samples[1].finish_reason == "stop" and samples[1].completion_tokens == 5
    )  # EOS not counted
    assert samples[0].text == samples[0].text.strip()
    assert [p.done_prompts for p in progress] == [2, 3]


def test_it_refuses_an_adapter_whose_hash_changed(
    fake_vllm: dict[str, Any], tiny_model_dir: str, tmp_path: Path
) -> None:
    config = GenerationConfig(
        model=tiny_model_dir,
        models_dir="unused",
        adapter=str(_adapter(tmp_path)),
        adapter_sha256="0" * 64,
    )
    with pytest.raises(ValueError, match="registered with"):
        generate_vllm(config, [[{"role": "user", "content": "Hi?"}]])
    assert "llm" not in fake_vllm  # refused before any engine was built


def test_without_vllm_it_says_what_to_do(tiny_model_dir: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    config = GenerationConfig(model=tiny_model_dir, models_dir="unused")
    with pytest.raises(RuntimeError) as raised:
        generate_vllm(config, [[{"role": "user", "content": "Hi?"}]])
    assert str(raised.value) == NOT_INSTALLED
