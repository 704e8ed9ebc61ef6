"""The engine's scorer: a completion's summed log-probability, batched and computed on the
completion's positions only, equals the plain full-vocabulary computation of each sequence."""

from __future__ import annotations

from typing import Any

import pytest

from alignment.engine.scoring import completion_logps
from alignment.engine.turns import turn_ids


def test_batched_completion_scores_equal_the_plain_computation(tiny_model_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.eval()
    short = [{"role": "user", "content": "Hi?"}]
    long = [
        {"role": "system", "content": "Answer in one line, politely and with care."},
        {"role": "user", "content": "What is the tallest mountain on Earth, and how tall?"},
    ]
    items = [
        (short, "Hello there.", True),
        (long, "Mount Everest, 8,849 metres above sea level.", True),
        (long, "Everest, which stands", False),  # cut off: no end of turn
        (short, "A much longer answer that goes on and on about greetings.", True),
    ]
    found = completion_logps(model, tokenizer, items, max_length=512, batch_size=3)
    for (prompt, text, complete), (total, count) in zip(items, found, strict=True):
        head, tail = turn_ids(tokenizer, prompt, text, complete=complete)
        ids = torch.tensor([head + tail])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        expected = logps[len(head) - 1 :].gather(1, ids[0, len(head) :, None]).sum()
        assert count == len(tail)
        assert total == pytest.approx(float(expected), abs=1e-3)


def test_lora_inputs_left_uncast_under_cpu_autocast_give_the_same_numbers(
    tiny_model_dir: str,
) -> None:
    """The engine trains on a CPU under bf16 autocast with PEFT's input cast off (training_run.
    _trainer_train): the LoRA matmuls are autocast to bf16 either way, so the outputs and the
    adapter's gradients must be the same without the float32 copies."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # as the engine keeps the adapter on a CPU
    ids = torch.tensor([[1, 5, 9, 13, 2, 7, 3, 4]])

    def run(uncast: bool) -> tuple[Any, list[Any]]:
        model.zero_grad()
        with (
            torch.autocast("cpu", dtype=torch.bfloat16),
            disable_input_dtype_casting(model, active=uncast),
        ):
            out = model(input_ids=ids).logits.float()
        out.sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return out.detach(), grads

    cast_out, cast_grads = run(False)
    uncast_out, uncast_grads = run(True)
    assert torch.equal(cast_out, uncast_out)
    assert all(torch.equal(a, b) for a, b in zip(cast_grads, uncast_grads, strict=True))
