"""Generation with vLLM, for GPU workers: the same contract as generation.generate.

Two ways to run it, chosen by the worker's settings (PREFLOOP_GENERATION_BACKEND=vllm):

- **A vLLM server** (PREFLOOP_VLLM_URL): `vllm serve BASE --enable-lora` as its own
  long-lived process or container, with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True. Each model
  version's adapter is loaded once by name (`prefloop-` and the first 16 hex digits of its
  weights' SHA-256) through /v1/load_lora_adapter, and a job is one /v1/completions request
  for every prompt, so the server's continuous batching sees the whole job. The adapter
  directories must be readable by the server at the same path (a shared volume).
- **An engine in the worker's process** (no URL; vLLM installed in the worker): built once
  and kept for the worker's lifetime (one per base model), holding
  PREFLOOP_VLLM_GPU_MEMORY of the GPU; each adapter is its own LoRA request, numbered by
  its weights. vLLM starts processes of its own, which a daemonic process (a Celery prefork
  child) may not: run such a worker with `--pool solo` or `--pool threads`.

Either way the prompts go as token ids, templated here with the model's chat template: the
server adds no second BOS to a template that has one. The samples differ from the
transformers backend's (another sampler); with one seed per job, a job is reproducible on
the same server and version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignment.engine.checkpoints import file_sha256
from alignment.engine.generation import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    GeneratedSample,
    GenerationConfig,
    GenerationProgress,
    Message,
    adapter_validate,
    generation_config_validate,
    prompts_validate,
)
from alignment.engine.sources import model_path_resolve, tokenizer_load
from alignment.engine.turns import prompt_ids
from core.text import CUT_OFF

NOT_INSTALLED = (
    "PREFLOOP_GENERATION_BACKEND is vllm but vLLM is not installed on this worker "
    "(pip install vllm on a GPU worker), set PREFLOOP_VLLM_URL to a vLLM server, or unset "
    "PREFLOOP_GENERATION_BACKEND to generate with transformers"
)
DAEMONIC = (
    "vLLM cannot start its engine inside a daemonic process (a Celery prefork child): run "
    "this worker with --pool solo or --pool threads, or serve the model with `vllm serve` "
    "and set PREFLOOP_VLLM_URL"
)
ADAPTER_NAME_PREFIX = "prefloop-"
DEFAULT_GPU_MEMORY = 0.45  # of the GPU, for an in-process engine: training needs the rest


def adapter_name(adapter: str) -> str:
    """The name a model version's adapter is served under: by its weights, so a version is
    one adapter on the server whatever path it was registered from."""
    return ADAPTER_NAME_PREFIX + file_sha256(Path(adapter) / ADAPTER_WEIGHTS_FILE)[:16]


def generate_vllm(
    config: GenerationConfig,
    prompts: Sequence[Sequence[Message]],
    *,
    on_progress: Callable[[GenerationProgress], None] | None = None,
    server_url: str = "",
    gpu_memory: float = DEFAULT_GPU_MEMORY,
) -> list[GeneratedSample]:
    """Sample ``samples_per_prompt`` responses for every prompt, in prompt order, with vLLM:
    from the server at ``server_url``, or from an engine in this process."""
    generation_config_validate(config)
    prompts_validate(prompts)
    if len(prompts) == 0:
        return []
    if config.adapter is not None:
        adapter_validate(config.adapter, sha256=config.adapter_sha256)
    path = model_path_resolve(source=config.model, models_dir=config.models_dir)
    tokenizer = tokenizer_load(path, trust_remote_code=config.trust_remote_code)
    token_prompts = [prompt_ids(tokenizer, messages) for messages in prompts]
    started = time.monotonic()
    if server_url:
        samples = VllmServer(server_url).generate(config, token_prompts)
    else:
        samples = _generate_in_process(config, path, token_prompts, gpu_memory)
    if on_progress is not None:
        on_progress(
            GenerationProgress(
                done_prompts=len(prompts),
                total_prompts=len(prompts),
                tokens_generated=sum(s.completion_tokens for s in samples),
                elapsed_s=time.monotonic() - started,
                samples=tuple(samples),
            )
        )
    return samples


def _sample(
    prompt_index: int,
    sample_index: int,
    *,
    text: str,
    prompt_tokens: int,
    token_count: int,
    finish_reason: str | None,
    seed: int,
) -> GeneratedSample:
    stopped = finish_reason != CUT_OFF
    return GeneratedSample(
        prompt_index=prompt_index,
        sample_index=sample_index,
        text=text.strip(),
        prompt_tokens=prompt_tokens,
        # vLLM counts the end-of-sequence token it stopped on; the contract does not.
        completion_tokens=max(token_count - (1 if stopped else 0), 0),
        finish_reason="stop" if stopped else CUT_OFF,
        seed=seed,
    )


class VllmServerError(RuntimeError):
    pass


class VllmServer:
    """A client of vLLM's OpenAI-compatible server: the models it serves, loading an adapter
    by name, and completions."""

    def __init__(self, url: str, *, timeout_s: float = 3600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise VllmServerError(
                f"vLLM server {self.url}{path} answered {error.code}: {_message(detail)}"
            ) from error
        except (urllib.error.URLError, OSError) as error:
            raise VllmServerError(
                f"cannot reach the vLLM server at {self.url} ({error}): is `vllm serve` "
                "running there, and PREFLOOP_VLLM_URL right?"
            ) from error
        return json.loads(raw) if raw.strip() else None

    def models(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", "/v1/models")["data"]
        return found

    def base_model(self) -> str:
        bases = [str(m["id"]) for m in self.models() if not m.get("parent")]
        if not bases:
            raise VllmServerError(f"the vLLM server at {self.url} serves no base model")
        return bases[0]

    def adapter_load(self, adapter: str) -> str:
        """Serve `adapter` by its name (adapter_name), loading it unless it is loaded; the
        name to ask completions of."""
        name = adapter_name(adapter)
        if any(m["id"] == name for m in self.models()):
            return name
        try:
            self._call(
                "POST",
                "/v1/load_lora_adapter",
                {"lora_name": name, "lora_path": str(Path(adapter).resolve())},
            )
        except VllmServerError as error:
            if "already been loaded" not in str(error):  # another worker loaded it meanwhile
                raise
        return name

    def generate(
        self, config: GenerationConfig, token_prompts: Sequence[Sequence[int]]
    ) -> list[GeneratedSample]:
        model = (
            self.adapter_load(config.adapter) if config.adapter is not None else self.base_model()
        )
        answer = self._call(
            "POST",
            "/v1/completions",
            {
                "model": model,
                "prompt": [list(p) for p in token_prompts],
                "n": config.samples_per_prompt,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "max_tokens": config.max_new_tokens,
                "seed": config.seed,
                "return_token_ids": True,
            },
        )
        choices = sorted(answer["choices"], key=lambda c: int(c["index"]))
        n = config.samples_per_prompt
        if len(choices) != len(token_prompts) * n:
            raise VllmServerError(
                f"the vLLM server answered {len(choices)} completions for "
                f"{len(token_prompts)} prompts x {n} samples"
            )
        return [
            _sample(
                int(choice["index"]) // n,
                int(choice["index"]) % n,
                text=choice["text"],
                prompt_tokens=len(token_prompts[int(choice["index"]) // n]),
                token_count=_token_count(choice),
                finish_reason=choice.get("finish_reason"),
                seed=config.seed,
            )
            for choice in choices
        ]


def _token_count(choice: dict[str, Any]) -> int:
    ids = choice.get("token_ids")
    if ids is None:
        raise VllmServerError(
            "the vLLM server returned no token ids (return_token_ids needs vLLM >= 0.10.2)"
        )
    return len(ids)


def _message(detail: str) -> str:
    try:
        body = json.loads(detail)
    except ValueError:
        return detail
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(body.get("message", error)) if isinstance(body, dict) else str(error)


@functools.cache
def _engine(path: str, trust_remote_code: bool, gpu_memory: float, max_lora_rank: int) -> Any:
    """The worker's engine for a base model, built on first use and kept (vLLM's start
    takes a minute; its KV cache is sized once)."""
    if multiprocessing.current_process().daemon:
        raise RuntimeError(DAEMONIC)
    try:
        from vllm import LLM
    except ImportError as error:
        raise RuntimeError(NOT_INSTALLED) from error
    return LLM(
        model=path,
        trust_remote_code=trust_remote_code,
        gpu_memory_utilization=gpu_memory,
        enable_lora=True,
        max_lora_rank=max_lora_rank,
        max_loras=4,
    )


# The adapter ranks an engine is built for (vLLM's choices, 8 to 512): a version's rank
# must be at most this.
ENGINE_MAX_LORA_RANK = 64


def _generate_in_process(
    config: GenerationConfig,
    path: str,
    token_prompts: Sequence[Sequence[int]],
    gpu_memory: float,
) -> list[GeneratedSample]:
    try:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise RuntimeError(NOT_INSTALLED) from error
    lora = None
    if config.adapter is not None:
        rank = int(json.loads((Path(config.adapter) / ADAPTER_CONFIG_FILE).read_text())["r"])
        if rank > ENGINE_MAX_LORA_RANK:
            raise ValueError(
                f"adapter rank {rank} is over the vLLM engine's {ENGINE_MAX_LORA_RANK}: "
                "serve it with `vllm serve --max-lora-rank` and PREFLOOP_VLLM_URL"
            )
        name = adapter_name(config.adapter)
        # A LoRA request is known to the engine by its number: one per adapter's weights.
        number = int(hashlib.sha256(name.encode()).hexdigest()[:7], 16) + 1
        lora = LoRARequest(name, number, config.adapter)
    llm = _engine(path, config.trust_remote_code, gpu_memory, ENGINE_MAX_LORA_RANK)
    params = SamplingParams(
        n=config.samples_per_prompt,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_new_tokens,
        seed=config.seed,
    )
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=list(p)) for p in token_prompts],
        params,
        lora_request=lora,
        use_tqdm=False,
    )
    return [
        _sample(
            prompt_index,
            index,
            text=completion.text,
            prompt_tokens=len(token_prompts[prompt_index]),
            token_count=len(completion.token_ids),
            finish_reason=completion.finish_reason,
            seed=config.seed,
        )
        for prompt_index, output in enumerate(outputs)
        for index, completion in enumerate(output.outputs)
    ]
