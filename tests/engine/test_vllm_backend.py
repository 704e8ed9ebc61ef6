"""The vLLM backend's side of the contract: what it asks of vLLM and what it returns.

vLLM needs a GPU and is not installed here. The server client is tested against a stand-in
that speaks vLLM's OpenAI-compatible HTTP API (tests/engine/vllm_standin.py); the in-process
engine against a stand-in `vllm` module that records the calls. They check our side
(templating to token ids, adapters by name, n samples, seeds, token counts, finish reasons,
errors), not vLLM itself, which bench/gpu_check.sh runs on a GPU machine.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from alignment.engine import vllm_backend
from alignment.engine.generation import GenerationConfig, GenerationProgress
from alignment.engine.vllm_backend import (
    DAEMONIC,
    NOT_INSTALLED,
    VllmServerError,
    adapter_name,
    generate_vllm,
)
from core.text import CUT_OFF
from tests.engine.vllm_standin import VllmStandIn

PROMPTS = [[{"role": "user", "content": f"Question {i}?"}] for i in range(3)]


def _adapter(tmp_path: Path, weights: bytes = b"weights", rank: int = 16) -> Path:
    adapter = tmp_path / f"adapter-{hashlib.sha256(weights).hexdigest()[:6]}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    return adapter


@pytest.fixture
def bos_model_dir(tiny_model_dir: str, tmp_path: Path) -> str:
    """The tiny model with a Llama-style template that starts with the BOS token itself."""
    target = tmp_path / "bos-model"
    shutil.copytree(tiny_model_dir, target)
    config_file = target / "tokenizer_config.json"
    data = json.loads(config_file.read_text())
    template = data.get("chat_template") or (target / "chat_template.jinja").read_text()
    data["chat_template"] = "{{ bos_token }}" + template
    data["bos_token"] = "<|endoftext|>"  # SmolLM2's own is <|im_start|>, which starts each turn
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config_file.write_text(json.dumps(data))
    return str(target)


def _config(model: str, **overrides: Any) -> GenerationConfig:
    values: dict[str, Any] = {
        "model": model,
        "models_dir": "unused",
        "samples_per_prompt": 2,
        "max_new_tokens": 7,
        "seed": 10,
        "batch_size": 2,
    }
    return GenerationConfig(**{**values, **overrides})


def test_a_job_is_one_request_of_token_ids_with_one_bos_to_the_server(bos_model_dir: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bos_model_dir)
    progress: list[GenerationProgress] = []
    with VllmStandIn(eos=tokenizer.eos_token_id) as server:
        samples = generate_vllm(
            _config(bos_model_dir), PROMPTS, on_progress=progress.append, server_url=server.url
        )
    completions = [body for method, path, body in server.requests if path == "/v1/completions"]
    assert len(completions) == 1  # the whole job: the server batches it continuously
    request = completions[0]
    assert request["model"] == "base-model"
    assert (request["n"], request["max_tokens"], request["seed"]) == (2, 7, 10)
    assert request["return_token_ids"] is True
    for ids, messages in zip(request["prompt"], PROMPTS, strict=True):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    # In prompt order and sample order, whatever order the server answered in.
    assert [(s.prompt_index, s.sample_index) for s in samples] == [
        (p, k) for p in range(3) for k in range(2)
    ]
    assert {s.seed for s in samples} == {10}
    assert all(s.text == s.text.strip() and s.text for s in samples)
    assert all(s.prompt_tokens == len(request["prompt"][s.prompt_index]) for s in samples)
    assert all(1 <= s.completion_tokens <= 7 for s in samples if s.finish_reason == CUT_OFF)
    assert all(0 <= s.completion_tokens < 7 for s in samples if s.finish_reason == "stop")
    assert {s.finish_reason for s in samples} == {"stop", CUT_OFF}  # both seen, EOS not counted
    assert [p.done_prompts for p in progress] == [3] and progress[0].samples == tuple(samples)
    assert progress[0].tokens_generated == sum(s.completion_tokens for s in samples)


def test_each_versions_adapter_is_loaded_by_name_once_and_sampled_by_it(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    first, second = _adapter(tmp_path, b"round 1"), _adapter(tmp_path, b"round 2")
    with VllmStandIn() as server:
        for adapter in (first, second, first):
            generate_vllm(
                _config(
                    tiny_model_dir,
                    adapter=str(adapter),
                    adapter_sha256=hashlib.sha256(
                        adapter.joinpath("adapter_model.safetensors").read_bytes()
                    ).hexdigest(),
                ),
                PROMPTS[:1],
                server_url=server.url,
            )
    loads = [body for method, path, body in server.requests if path == "/v1/load_lora_adapter"]
    assert [b["lora_name"] for b in loads] == [adapter_name(str(first)), adapter_name(str(second))]
    assert loads[0]["lora_path"] == str(first.resolve())
    assert adapter_name(str(first)).startswith("prefloop-") and len(set(server.adapters)) == 2
    models = [body["model"] for method, path, body in server.requests if path == "/v1/completions"]
    assert models == [adapter_name(str(first)), adapter_name(str(second)), adapter_name(str(first))]


def test_an_adapter_another_worker_loaded_meanwhile_is_used(
    tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _adapter(tmp_path)
    with VllmStandIn() as server:
        client = vllm_backend.VllmServer(server.url)
        # The other worker's load lands between our look at /v1/models and our load.
        monkeypatch.setattr(client, "models", lambda: [{"id": "base-model", "parent": None}])
        server.adapters[adapter_name(str(adapter))] = str(adapter)
        assert client.adapter_load(str(adapter)) == adapter_name(str(adapter))


def test_the_servers_errors_say_what_went_wrong(tiny_model_dir: str, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path)
    with VllmStandIn() as server:
        url = server.url
        # The adapter's directory is not where the server looks (no shared volume).
        (adapter / "adapter_config.json").rename(adapter / "moved.json")
        with pytest.raises(VllmServerError, match=r"load_lora_adapter answered 400: No adapter"):
            vllm_backend.VllmServer(url).adapter_load(str(adapter))
        with pytest.raises(VllmServerError, match=r"404: The model `nope` does not exist"):
            vllm_backend.VllmServer(url)._call(
                "POST", "/v1/completions", {"model": "nope", "prompt": [[1]], "max_tokens": 1}
            )
    with pytest.raises(VllmServerError, match=r"cannot reach the vLLM server.*PREFLOOP_VLLM_URL"):
        generate_vllm(_config(tiny_model_dir), PROMPTS, server_url=url)


def test_it_refuses_an_adapter_whose_hash_changed_before_asking_the_server(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    config = _config(tiny_model_dir, adapter=str(_adapter(tmp_path)), adapter_sha256="0" * 64)
    with VllmStandIn() as server, pytest.raises(ValueError, match="registered with"):
        generate_vllm(config, PROMPTS, server_url=server.url)
    assert server.requests == []


class _Completion:
    def __init__(self, tokens: int, finish: str) -> None:
        self.text, self.token_ids, self.finish_reason = " an answer ", list(range(tokens)), finish


class _Output:
    def __init__(self, n: int) -> None:
        self.outputs = [_Completion(5 + i, "stop" if i % 2 else "length") for i in range(n)]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {"engines": [], "generate": []}

    class LLM:
        def __init__(self, model: str, **kwargs: Any) -> None:
            calls["engines"].append({"model": model, **kwargs})

        def generate(self, prompts: list[Any], params: Any, **kwargs: Any) -> list[_Output]:
            calls["generate"].append({"prompts": prompts, "params": params, **kwargs})
            return [_Output(params.n) for _ in prompts]

    class Record:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args = args
            self.__dict__.update(kwargs)

    modules = {
        name: types.ModuleType(name)
        for name in ("vllm", "vllm.inputs", "vllm.lora", "vllm.lora.request")
    }
    modules["vllm"].LLM = LLM  # type: ignore[attr-defined]
    modules["vllm"].SamplingParams = Record  # type: ignore[attr-defined]
    modules["vllm.inputs"].TokensPrompt = Record  # type: ignore[attr-defined]
    modules["vllm.lora.request"].LoRARequest = Record  # type: ignore[attr-defined]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    vllm_backend._engine.cache_clear()
    yield calls
    vllm_backend._engine.cache_clear()


def test_the_in_process_engine_lives_for_the_worker_and_numbers_each_adapter(
    fake_vllm: dict[str, Any], tiny_model_dir: str, tmp_path: Path
) -> None:
    first, second = _adapter(tmp_path, b"round 1"), _adapter(tmp_path, b"round 2")
    for adapter in (first, second):
        samples = generate_vllm(
            _config(tiny_model_dir, adapter=str(adapter)), PROMPTS, gpu_memory=0.3
        )
    assert len(fake_vllm["engines"]) == 1  # built once, kept
    engine = fake_vllm["engines"][0]
    assert engine["model"] == tiny_model_dir and engine["gpu_memory_utilization"] == 0.3
    assert engine["enable_lora"] and engine["max_lora_rank"] >= 16
    calls = fake_vllm["generate"]
    assert [len(c["prompts"]) for c in calls] == [3, 3]  # one call a job
    assert all(isinstance(p.prompt_token_ids, list) for p in calls[0]["prompts"])
    loras = [c["lora_request"] for c in calls]
    assert [lora.args[2] for lora in loras] == [str(first), str(second)]
    assert loras[0].args[1] != loras[1].args[1]  # another adapter, another LoRA number
    assert calls[0]["params"].seed == 10 and calls[0]["params"].n == 2
    assert samples[0].finish_reason == CUT_OFF and samples[0].completion_tokens == 5
    assert samples[1].finish_reason == "stop" and samples[1].completion_tokens == 5  # EOS


def test_the_in_process_engine_refuses_a_daemonic_process(
    fake_vllm: dict[str, Any], tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    with pytest.raises(RuntimeError) as raised:
        generate_vllm(_config(tiny_model_dir), PROMPTS)
    assert str(raised.value) == DAEMONIC and fake_vllm["engines"] == []


def test_without_vllm_it_says_what_to_do(
    tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    vllm_backend._engine.cache_clear()
    with pytest.raises(RuntimeError) as raised:
        generate_vllm(_config(tiny_model_dir), PROMPTS)
    assert str(raised.value) == NOT_INSTALLED
