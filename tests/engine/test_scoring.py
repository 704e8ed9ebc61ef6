"""The engine's scorer: a completion's summed log-probability, batched and computed on the
completion's positions only, equals the plain full-vocabulary computation of each sequence."""

from __future__ import annotations

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
