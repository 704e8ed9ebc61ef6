"""Sampling responses from a policy (a base model, optionally with a LoRA adapter)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alignment.engine.allocator import malloc_tuned_for_tensors
from alignment.engine.checkpoints import file_sha256
from alignment.engine.sources import (
    cpu_bf16_fast,
    cuda_available,
    model_load,
    model_path_resolve,
    tokenizer_load,
    torch_threads_fit,
)
from alignment.engine.spec import SamplingParameters
from core.text import CUT_OFF

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Message = Mapping[str, str]  # {"role": ..., "content": ...}

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class GenerationConfig:
    model: str  # model source (see sources.py)
    models_dir: str
    adapter: str | None = None  # PEFT LoRA adapter dir (safetensors), or None for the base alone
    adapter_sha256: str | None = None  # the adapter weights must hash to this (when given)
    samples_per_prompt: int = 2
    # The defaults of a round's sampling (alignment.engine.spec); the bounds there are the
    # lead's, wider here (a test samples 2 tokens).
    max_new_tokens: int = SamplingParameters.max_new_tokens
    temperature: float = SamplingParameters.temperature
    top_p: float = SamplingParameters.top_p
    seed: int = SamplingParameters.seed
    batch_size: int = SamplingParameters.batch_size  # prompts per batch
    trust_remote_code: bool = False


@dataclass(frozen=True)
class GeneratedSample:
    prompt_index: int
    sample_index: int
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, not counting the stop token
    finish_reason: str  # "stop", or CUT_OFF ("length")
    seed: int  # the seed that makes this batch reproducible


@dataclass(frozen=True)
class GenerationProgress:
    done_prompts: int
    total_prompts: int
    tokens_generated: int
    elapsed_s: float
    samples: tuple[GeneratedSample, ...]  # the samples of the batch just finished


def generation_config_validate(config: GenerationConfig) -> None:
    """Raise ValueError naming the first invalid field of ``config``."""
    if config.samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {config.samples_per_prompt}")
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
    if config.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {config.temperature}")
    if not 0 < config.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {config.top_p}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.adapter is not None:
        adapter_validate(config.adapter)


def adapter_validate(adapter: str, *, sha256: str | None = None) -> None:
    """Raise ValueError unless ``adapter`` is a directory with a safetensors LoRA adapter
    (and, given ``sha256``, one whose weights hash to it: the adapter that was registered)."""
    path = Path(adapter)
    if not (path / ADAPTER_CONFIG_FILE).is_file():
        raise ValueError(f"adapter {adapter!r} has no {ADAPTER_CONFIG_FILE}")
    # Only safetensors: peft would fall back to a pickled adapter_model.bin.
    if not (path / ADAPTER_WEIGHTS_FILE).is_file():
        raise ValueError(f"adapter {adapter!r} has no {ADAPTER_WEIGHTS_FILE}")
    if sha256 is not None:
        found = file_sha256(path / ADAPTER_WEIGHTS_FILE)
        if found != sha256:
            raise ValueError(
                f"adapter {adapter!r}: {ADAPTER_WEIGHTS_FILE} has SHA-256 {found[:12]}..., "
                f"not the {sha256[:12]}... it was registered with (changed or corrupted)"
            )


def messages_guided(messages: Sequence[Message], guidance: str) -> list[dict[str, str]]:
    """The prompt with `guidance` (what annotators prefer, in words) added to its last user
    message: a guided sample shows the annotators what the plain policy seldom writes."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message["role"] == "user":
            message["content"] = f"{message['content']}\n\n(Guidelines: {guidance.strip()})"
            return out
    raise ValueError("a guided prompt needs a user message")


def prompts_validate(prompts: Sequence[Sequence[Message]]) -> None:
    for index, messages in enumerate(prompts):
        if len(messages) == 0:
            raise ValueError(f"prompt {index} has no messages")
        for message in messages:
            if not isinstance(message.get("role"), str) or not isinstance(
                message.get("content"), str
            ):
                raise ValueError(f"prompt {index}: each message needs string 'role' and 'content'")


def generate(
    config: GenerationConfig,
    prompts: Sequence[Sequence[Message]],
    *,
    on_progress: Callable[[GenerationProgress], None] | None = None,
) -> list[GeneratedSample]:
    """Sample ``samples_per_prompt`` responses for every prompt, in prompt order.

    Batch ``b`` (prompts ``b*batch_size`` onwards) is sampled with seed ``seed + b``, so
    the same config and prompts give the same samples. ``on_progress`` is called after
    every batch.
    """
    generation_config_validate(config)
    prompts_validate(prompts)
    if len(prompts) == 0:
        return []
    with malloc_tuned_for_tensors():
        return _generate(config, prompts, on_progress)


def _generate(
    config: GenerationConfig,
    prompts: Sequence[Sequence[Message]],
    on_progress: Callable[[GenerationProgress], None] | None,
) -> list[GeneratedSample]:
    import torch

    torch_threads_fit()
    path = model_path_resolve(source=config.model, models_dir=config.models_dir)
    tokenizer = tokenizer_load(path, trust_remote_code=config.trust_remote_code)
    model = policy_load(
        path,
        adapter=config.adapter,
        adapter_sha256=config.adapter_sha256,
        trust_remote_code=config.trust_remote_code,
    )
    stop_ids = stop_token_ids(model, tokenizer)
    started = time.monotonic()
    samples: list[GeneratedSample] = []
    tokens_generated = 0
    with torch.inference_mode():
        for batch_index, start in enumerate(range(0, len(prompts), config.batch_size)):
            batch = prompts[start : start + config.batch_size]
            seed = config.seed + batch_index
            batch_samples = _batch_generate(
                model, tokenizer, config, batch, first_index=start, seed=seed, stop_ids=stop_ids
            )
            samples.extend(batch_samples)
            tokens_generated += sum(s.completion_tokens for s in batch_samples)
            if on_progress is not None:
                on_progress(
                    GenerationProgress(
                        done_prompts=start + len(batch),
                        total_prompts=len(prompts),
                        tokens_generated=tokens_generated,
                        elapsed_s=time.monotonic() - started,
                        samples=tuple(batch_samples),
                    )
                )
    return samples


def generation_dtype() -> torch.dtype:
    import torch

    # bfloat16 where the hardware has it: measured 1.7x the float32 tokens/s on a 2-core
    # AVX512-BF16 CPU (bench/engine_generation.py).
    return torch.bfloat16 if cuda_available() or cpu_bf16_fast() else torch.float32


def policy_load(
    path: str,
    *,
    adapter: str | None,
    adapter_sha256: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The base model unquantized, with ``adapter`` merged in when given (hash-checked
    against ``adapter_sha256`` just before it is read)."""
    model = model_load(
        path,
        quantize_4bit=False,
        trust_remote_code=trust_remote_code,
        dtype=generation_dtype(),
    )
    if adapter is not None:
        from peft import PeftModel

        adapter_validate(adapter, sha256=adapter_sha256)
        # Merged weights generate as fast as the base; an unmerged adapter adds matmuls.
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        # PEFT leaves the merged weights frozen. Frozen, torch's CPU kernels took another path
        # under inference mode that held 1.3 GB more than the base model does (2.5 against
        # 1.2 GB peak RSS, 16 prompts x 2 samples: bench/generation_memory.py). No gradient is
        # ever computed here either way (inference mode).
        model.requires_grad_(True)
    model.eval()
    return model


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    return ids


def _batch_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: GenerationConfig,
    batch: Sequence[Sequence[Message]],
    *,
    first_index: int,
    seed: int,
    stop_ids: set[int],
) -> list[GeneratedSample]:
    import torch

    texts = [
        tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
        )
        for messages in batch
    ]
    # The chat template already holds the special tokens; adding them again doubles BOS.
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
        model.device
    )
    samples_per_prompt = config.samples_per_prompt
    # Greedy copies of one prompt would be equal: decode it once.
    copies = 1 if config.temperature == 0 else samples_per_prompt
    torch.manual_seed(seed)
    completions, stopped = decode(
        model,
        encoded["input_ids"].repeat_interleave(copies, dim=0),
        encoded["attention_mask"].repeat_interleave(copies, dim=0),
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        stop_ids=stop_ids,
    )
    if copies == 1 and samples_per_prompt > 1:
        completions = [c for c in completions for _ in range(samples_per_prompt)]
        stopped = [s for s in stopped for _ in range(samples_per_prompt)]
    prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
    samples = []
    for row, kept in enumerate(completions):
        local_prompt = row // samples_per_prompt
        samples.append(
            GeneratedSample(
                prompt_index=first_index + local_prompt,
                sample_index=row % samples_per_prompt,
                text=str(tokenizer.decode(kept, skip_special_tokens=True)).strip(),
                prompt_tokens=int(prompt_lengths[local_prompt]),
                completion_tokens=len(kept),
                finish_reason="stop" if stopped[row] else CUT_OFF,
                seed=seed,
            )
        )
    return samples


def decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: set[int],
) -> tuple[list[list[int]], list[bool]]:
    """Sample a completion for every row of a left-padded batch, with the KV cache, dropping
    each row from the batch as soon as it stops: a batch costs the tokens its rows generate,
    not its longest row's count for every row (HF's generate keeps finished rows to the
    end). Temperature 0 is greedy; otherwise temperature and top-p (nucleus) sampling from
    torch's global generator. Returns each row's tokens (the stop token left out) and
    whether it stopped before max_new_tokens."""
    import torch
    from transformers import DynamicCache

    rows = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    stopped = [False] * rows
    active = list(range(rows))
    cache = DynamicCache()
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    for step in range(max_new_tokens):
        chosen = _next_tokens(logits, temperature, top_p).tolist()
        keep = []
        for index, (row, token) in enumerate(zip(active, chosen, strict=True)):
            if token in stop_ids:
                stopped[row] = True
            else:
                tokens[row].append(token)
                keep.append(index)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            selected = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(selected)
            attention_mask = attention_mask[selected]
            active = [active[i] for i in keep]
        attention_mask = torch.cat(
            [attention_mask, attention_mask.new_ones((len(active), 1))], dim=1
        )
        logits = model(
            input_ids=torch.tensor([[chosen[i]] for i in keep], device=input_ids.device),
            attention_mask=attention_mask,
            position_ids=attention_mask.sum(dim=1, keepdim=True) - 1,
            cache=cache,
            use_cache=True,
        ).logits[:, -1]
    return tokens, stopped


def _next_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row: the most likely at temperature 0, else sampled from the smallest
    set of most likely tokens whose probability reaches top_p, at that temperature."""
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        ordered, order = probs.sort(dim=-1, descending=True)
        # A token is kept when the mass before it is below top_p (the first always is).
        ordered[(ordered.cumsum(dim=-1) - ordered) >= top_p] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return torch.multinomial(probs, num_samples=1)[:, 0]
