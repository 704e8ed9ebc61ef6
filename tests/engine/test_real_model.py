"""The packaged SmolLM2 end to end: generate, a few QLoRA DPO steps, generate with the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.engine.generation import GenerationConfig, generate, policy_load
from alignment.engine.sources import PACKAGED_SMOLLM2, tokenizer_load
from alignment.engine.training import PreferenceExample, TrainingConfig, train

pytestmark = pytest.mark.slow

PROMPTS = [
    "Give me some tips for sleeping better.",
    "How do I make a good cup of coffee?",
    "What should I pack for a weekend hiking trip?",
    "Explain what a black hole is.",
]


def _logprob(model: object, tokenizer: object, prompt: str, response: str) -> float:
    import torch

    messages = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # type: ignore[attr-defined]
    full = prefix + response + "<|im_end|>"
    ids = tokenizer(full, return_tensors="pt", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float()  # type: ignore[operator]
    logps = logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logps[start - 1 :].sum())


def test_it_trains_an_adapter_that_moves_the_packaged_model(
    smollm2_path: str, models_dir: Path, tmp_path: Path
) -> None:
    config = GenerationConfig(
        model=PACKAGED_SMOLLM2, models_dir=str(models_dir), max_new_tokens=64, batch_size=4
    )
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    samples = generate(config, prompts)
    assert len(samples) == 8 and all(s.text for s in samples)

    # Prefer a terse answer over the model's own long one.
    examples = [
        PreferenceExample(
            prompt=({"role": "user", "content": PROMPTS[s.prompt_index]},),
            chosen="Short answer: " + s.text.split(".")[0] + ".",
            rejected=s.text,
        )
        for s in samples
    ]
    progress: list[object] = []
    result = train(
        TrainingConfig(
            model=PACKAGED_SMOLLM2,
            models_dir=str(models_dir),
            output_dir=str(tmp_path / "run"),
            epochs=1,
            batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            lora_r=8,
            lora_alpha=16,
            max_length=192,
        ),
        examples,
        on_progress=progress.append,
    )
    assert result.steps == 4 and len(progress) == 4
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()

    tokenizer = tokenizer_load(smollm2_path)
    base = policy_load(smollm2_path, adapter=None)
    tuned = policy_load(smollm2_path, adapter=result.adapter_dir)
    example = examples[0]
    prompt = example.prompt[0]["content"]
    base_margin = _logprob(base, tokenizer, prompt, example.chosen) - _logprob(
        base, tokenizer, prompt, example.rejected
    )
    tuned_margin = _logprob(tuned, tokenizer, prompt, example.chosen) - _logprob(
        tuned, tokenizer, prompt, example.rejected
    )
    assert tuned_margin > base_margin + 1.0

    greedy = GenerationConfig(
        model=PACKAGED_SMOLLM2,
        models_dir=str(models_dir),
        max_new_tokens=48,
        temperature=0.0,
        samples_per_prompt=1,
    )
    before = generate(greedy, prompts)
    after = generate(
        GenerationConfig(**{**greedy.__dict__, "adapter": result.adapter_dir}), prompts
    )
    assert [s.text for s in after] != [s.text for s in before]
