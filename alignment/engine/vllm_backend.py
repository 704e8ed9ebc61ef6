"""Generation with vLLM, for GPU workers: the same contract as generation.generate.

Chosen by configuration (PREFLOOP_GENERATION_BACKEND=vllm on the worker); vLLM itself is not
a dependency of the project and is installed on the GPU worker's image (`pip install vllm`).
A policy's LoRA adapter is served as a LoRA request on the base model, not merged, so one
engine holds the base for every version. Batch b is sampled with seed `seed + b`, as with
transformers; the samples differ from the transformers backend's all the same (another
sampler).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignment.engine.generation import (
    ADAPTER_CONFIG_FILE,
    GeneratedSample,
    GenerationConfig,
    GenerationProgress,
    Message,
    adapter_validate,
    generation_config_validate,
    prompts_validate,
)
from alignment.engine.sources import model_path_resolve
from core.text import CUT_OFF

NOT_INSTALLED = (
    "PREFLOOP_GENERATION_BACKEND is vllm but vLLM is not installed on this worker "
    "(pip install vllm on a GPU worker), or unset it to generate with transformers"
)


def generate_vllm(
    config: GenerationConfig,
    prompts: Sequence[Sequence[Message]],
    *,
    on_progress: Callable[[GenerationProgress], None] | None = None,
) -> list[GeneratedSample]:
    """Sample ``samples_per_prompt`` responses for every prompt, in prompt order, with vLLM."""
    generation_config_validate(config)
    prompts_validate(prompts)
    if len(prompts) == 0:
        return []
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise RuntimeError(NOT_INSTALLED) from error
    path = model_path_resolve(source=config.model, models_dir=config.models_dir)
    lora: Any = None
    engine_args: dict[str, Any] = {}
    if config.adapter is not None:
        adapter_validate(config.adapter, sha256=config.adapter_sha256)
        rank = int(json.loads((Path(config.adapter) / ADAPTER_CONFIG_FILE).read_text())["r"])
        engine_args.update(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)
        lora = LoRARequest("policy", 1, config.adapter)
    llm = LLM(
        model=path,
        seed=config.seed,
        trust_remote_code=config.trust_remote_code,
        **engine_args,
    )
    tokenizer = llm.get_tokenizer()
    texts = [
        tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
        for messages in prompts
    ]
    started = time.monotonic()
    samples: list[GeneratedSample] = []
    tokens_generated = 0
    for batch_index, start in enumerate(range(0, len(texts), config.batch_size)):
        seed = config.seed + batch_index
        params = SamplingParams(
            n=config.samples_per_prompt,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_new_tokens,
            seed=seed,
        )
        outputs = llm.generate(
            texts[start : start + config.batch_size], params, lora_request=lora, use_tqdm=False
        )
        batch_samples = [
            GeneratedSample(
                prompt_index=start + offset,
                sample_index=index,
                text=completion.text.strip(),
                prompt_tokens=len(output.prompt_token_ids),
                completion_tokens=len(completion.token_ids)
                - (1 if completion.finish_reason == "stop" else 0),
                finish_reason=CUT_OFF if completion.finish_reason == CUT_OFF else "stop",
                seed=seed,
            )
            for offset, output in enumerate(outputs)
            for index, completion in enumerate(output.outputs)
        ]
        samples.extend(batch_samples)
        tokens_generated += sum(s.completion_tokens for s in batch_samples)
        if on_progress is not None:
            on_progress(
                GenerationProgress(
                    done_prompts=min(start + config.batch_size, len(texts)),
                    total_prompts=len(texts),
                    tokens_generated=tokens_generated,
                    elapsed_s=time.monotonic() - started,
                    samples=tuple(batch_samples),
                )
            )
    return samples
