from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from alignment.engine.generation import (
    GeneratedSample,
    GenerationConfig,
    GenerationProgress,
    generate,
)

PROMPTS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}],
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
]


def _config(model_dir: str, **overrides: object) -> GenerationConfig:
    base = GenerationConfig(model=model_dir, models_dir="unused", max_new_tokens=8, batch_size=2)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def _texts(samples: list[GeneratedSample]) -> list[str]:
    return [s.text for s in samples]


def test_it_returns_samples_per_prompt_in_order_and_reports_each_batch(
    tiny_model_dir: str,
) -> None:
    progress: list[GenerationProgress] = []
    samples = generate(_config(tiny_model_dir, seed=5), PROMPTS, on_progress=progress.append)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    assert all(0 < s.completion_tokens <= 8 for s in samples)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Counted without the left padding that batching adds.
    expected = [
        len(
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"]
        )
        for p in PROMPTS
    ]
    assert [s.prompt_tokens for s in samples[::2]] == expected
    assert [s.seed for s in samples] == [5, 5, 5, 5, 6, 6]
    assert [p.done_prompts for p in progress] == [2, 3]
    assert [p.total_prompts for p in progress] == [3, 3]
    assert [len(p.samples) for p in progress] == [4, 2]
    assert progress[-1].tokens_generated == sum(s.completion_tokens for s in samples)


def test_it_reproduces_samples_with_the_same_seed(tiny_model_dir: str) -> None:
    first = generate(_config(tiny_model_dir, seed=1), PROMPTS)
    again = generate(_config(tiny_model_dir, seed=1), PROMPTS)
    other = generate(_config(tiny_model_dir, seed=2), PROMPTS)
    assert _texts(first) == _texts(again)
    assert _texts(first) != _texts(other)


def test_it_samples_different_responses_to_one_prompt(tiny_model_dir: str) -> None:
    samples = generate(_config(tiny_model_dir, samples_per_prompt=3, temperature=1.0), PROMPTS[:1])
    assert len(set(_texts(samples))) == 3


def test_it_decodes_greedily_at_temperature_zero(tiny_model_dir: str) -> None:
    samples = generate(_config(tiny_model_dir, temperature=0.0, seed=1), PROMPTS)
    reseeded = generate(_config(tiny_model_dir, temperature=0.0, seed=99), PROMPTS)
    assert samples[0].text == samples[1].text
    assert _texts(samples) == _texts(reseeded)


def test_it_reports_stop_and_length_finish_reasons(smollm2_path: str) -> None:
    prompt = [[{"role": "user", "content": "What is the capital of France? Answer in one word."}]]
    stopped = generate(_config(smollm2_path, temperature=0.0, max_new_tokens=40), prompt)
    cut = generate(_config(smollm2_path, temperature=0.0, max_new_tokens=2), prompt)
    assert stopped[0].finish_reason == "stop"
    assert "Paris" in stopped[0].text
    assert "<|im_end|>" not in stopped[0].text
    assert stopped[0].completion_tokens < 40
    assert (cut[0].finish_reason, cut[0].completion_tokens) == ("length", 2)


def _adapter_make(model_dir: str, out: Path) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # init_lora_weights=False: random B, so the adapter changes the outputs at once.
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out), safe_serialization=True)
    return str(out)


def test_it_generates_with_an_adapter(tiny_model_dir: str, tmp_path: Path) -> None:
    adapter = _adapter_make(tiny_model_dir, tmp_path / "adapter")
    base = generate(_config(tiny_model_dir, temperature=0.0), PROMPTS)
    adapted = generate(_config(tiny_model_dir, temperature=0.0, adapter=adapter), PROMPTS)
    assert len(adapted) == len(base)
    assert _texts(adapted) != _texts(base)


def test_it_refuses_an_adapter_without_safetensors(tiny_model_dir: str, tmp_path: Path) -> None:
    adapter = Path(_adapter_make(tiny_model_dir, tmp_path / "adapter"))
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors"):
        generate(_config(tiny_model_dir, adapter=str(adapter)), PROMPTS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("samples_per_prompt", 0),
        ("max_new_tokens", 0),
        ("top_p", 0.0),
        ("batch_size", 0),
        ("temperature", -1.0),
    ],
)
def test_it_rejects_invalid_settings(tiny_model_dir: str, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        generate(_config(tiny_model_dir, **{field: value}), PROMPTS)


def test_it_rejects_an_empty_prompt(tiny_model_dir: str) -> None:
    with pytest.raises(ValueError, match="prompt 1"):
        generate(_config(tiny_model_dir), [PROMPTS[0], []])


def test_it_returns_nothing_for_no_prompts(tiny_model_dir: str) -> None:
    assert generate(_config(tiny_model_dir), []) == []


def test_a_row_leaves_the_batch_when_it_stops_and_every_row_reads_as_hf_generate_would(
    smollm2_path: str,
) -> None:
    """Finished rows are dropped from the batch (they cost nothing more), and the rows read
    token for token as transformers' own greedy generate (which keeps them to the end)."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignment.engine.generation import decode, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in PROMPTS
    ]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    stop_ids = stop_token_ids(model, tokenizer)
    widths: list[int] = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    with torch.inference_mode():
        tokens, stopped = decode(
            model,
            encoded["input_ids"],
            encoded["attention_mask"],
            max_new_tokens=12,
            temperature=0.0,
            top_p=1.0,
            stop_ids=stop_ids,
        )
        decoding = list(widths)  # the batch size of each of decode's forward passes
        reference = model.generate(
            **encoded, max_new_tokens=12, do_sample=False, eos_token_id=sorted(stop_ids)
        )[:, encoded["input_ids"].shape[1] :].tolist()
    for row, theirs in enumerate(reference):
        end = next((i for i, t in enumerate(theirs) if t in stop_ids), None)
        assert tokens[row] == theirs[:end] and stopped[row] == (end is not None)
    # "Paris" stops its row early; the batch goes on without it.
    assert stopped[2] and len(tokens[2]) < 12
    assert decoding[0] == 3 and decoding[-1] < 3
