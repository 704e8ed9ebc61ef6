"""Scoring preference pairs with a model: summed completion log-probabilities as the chat
template lays them out, the held-out figures before and after training, and the pairs a
trained policy ranks the other way round (contradictions)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from alignment.engine.training import (
    REFERENCE_FREE,
    Contradiction,
    PreferenceExample,
    TrainingConfig,
    ValidationFigures,
)
from alignment.engine.turns import turn_ids

# Per pair: (chosen log-prob, chosen tokens, rejected log-prob, rejected tokens).
PairLogps = list[tuple[float, int, float, int]]
INDEX_COLUMN = "prefloop_index"  # a DPO row's example index, kept through TRL's tokenization
LENGTH_COLUMN = "prefloop_length"  # a DPO row's longest sequence in tokens, for the sampler
SCORE_BATCH = 8  # sequences per forward pass when scoring pairs


def pair_logps(
    model: Any,
    tokenizer: Any,
    examples: Sequence[PreferenceExample],
    max_length: int,
    batch_size: int = SCORE_BATCH,
) -> PairLogps:
    """Each pair's summed completion log-probabilities under `model`, with the completions'
    token counts: (chosen, n_chosen, rejected, n_rejected) per pair."""
    items = [
        item
        for e in examples
        for item in (
            (e.prompt, e.chosen, e.chosen_complete),
            (e.prompt, e.rejected, e.rejected_complete),
        )
    ]
    sums = completion_logps(model, tokenizer, items, max_length, batch_size)
    return [(*sums[2 * k], *sums[2 * k + 1]) for k in range(len(examples))]


def completion_logps(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[Sequence[Mapping[str, str]], str, bool]],
    max_length: int,
    batch_size: int = SCORE_BATCH,
) -> list[tuple[float, int]]:
    """Per (prompt messages, completion, complete): the completion's summed log-probability
    under `model`, in the mode it is in, and its token count, laid out as training lays it
    out (alignment.engine.turns: a cut-off completion without the end of its turn).
    Scored in right-padded batches of similar length. A trainer's model scores in train mode
    (its dropout is off): bitsandbytes' 4-bit CPU layers compute differently in eval mode."""
    if not items:
        return []
    import torch

    sequences = []
    for prompt, text, complete in items:
        head, tail = turn_ids(tokenizer, prompt, text, complete=complete)
        whole = (head + tail)[:max_length]
        sequences.append((whole, min(len(head), len(whole) - 1)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    sums: list[tuple[float, int]] = [(0.0, 1)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    with torch.no_grad():
        for offset in range(0, len(order), batch_size):
            batch = order[offset : offset + batch_size]
            width = max(len(sequences[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
            mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
            for row, i in enumerate(batch):
                tokens = sequences[i][0]
                ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
                mask[row, : len(tokens)] = 1
            # Logits only from the first position that predicts a completion token on (the
            # prompts' are not needed), in the model's dtype; each row's completion is then
            # scored in float32 on its own: never a (batch, length, vocabulary) float32 tensor
            # and its log-softmax (1.6 GB for 8 sequences of 512 tokens and a 49k vocabulary).
            first = min(max(sequences[i][1] - 1, 0) for i in batch)
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=width - first).logits
            for row, i in enumerate(batch):
                tokens, start = sequences[i]
                # Logit t (from `first`) predicts token first + t + 1.
                span = slice(max(start - 1, 0) - first, len(tokens) - 1 - first)
                targets = ids[row, span.start + first + 1 : span.stop + first + 1]
                scores = logits[row, span].float()
                taken = scores.gather(1, targets[:, None])[:, 0] - torch.logsumexp(scores, dim=-1)
                sums[i] = (float(taken.sum()), max(int(taken.numel()), 1))
    return sums


def reference_logps(dataset: Any) -> dict[int, tuple[float, float]]:
    """The reference log-probabilities TRL put on its tokenized DPO dataset, by example index
    (TRL drops a pair whose prompt alone fills max_length)."""
    return {
        int(i): (float(c), float(r))
        for i, c, r in zip(
            dataset[INDEX_COLUMN],
            dataset["ref_chosen_logps"],
            dataset["ref_rejected_logps"],
            strict=True,
        )
    }


@contextlib.contextmanager
def train_mode(model: Any) -> Iterator[None]:
    """`model` in train mode for the block, as the training steps run it (TRL turns dropout
    off), then back in the mode it was in."""
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


def dpo_contradictions(trainer: Any, beta: float) -> tuple[Contradiction, ...]:
    """DPO's contradictions from the reference log-probabilities TRL used and one pass of
    the trained policy over the same tokens."""
    reference = reference_logps(trainer.train_dataset)
    policy = trainer.policy_logps()
    found = []
    for index, (pc, pr) in sorted(policy.items()):
        rc, rr = reference[index]
        margin = beta * ((pc - rc) - (pr - rr))
        if margin < 0:
            found.append(Contradiction(index=index, margin=margin))
    return tuple(sorted(found, key=lambda c: c.margin))


def contradictions(
    model: Any, tokenizer: Any, examples: Sequence[PreferenceExample], config: TrainingConfig
) -> tuple[Contradiction, ...]:
    """The preference pairs the trained `model` ranks the other way round (see Contradiction)."""
    indices = [i for i, example in enumerate(examples) if example.kind == "preference"]
    pairs = [examples[i] for i in indices]
    policy = pair_logps(model, tokenizer, pairs, config.max_length)
    if config.method in REFERENCE_FREE:
        margins = [c / nc - r / nr for c, nc, r, nr in policy]
    else:
        reference = reference_pair_logps(model, tokenizer, pairs, config.max_length)
        margins = [
            config.beta * ((pc - rc) - (pr - rr))
            for (pc, _, pr, _), (rc, _, rr, _) in zip(policy, reference, strict=True)
        ]
    found = [
        Contradiction(index=i, margin=m) for i, m in zip(indices, margins, strict=True) if m < 0
    ]
    return tuple(sorted(found, key=lambda c: c.margin))


def reference_pair_logps(
    model: Any, tokenizer: Any, examples: Sequence[PreferenceExample], max_length: int
) -> PairLogps:
    """`pair_logps` under the run's reference as TRL takes it: the "ref" adapter when there
    is one, else no adapter (the base)."""
    from trl.trainer.utils import use_adapter

    name = "ref" if "ref" in getattr(model, "peft_config", {}) else None
    with use_adapter(model, adapter_name=name):
        return pair_logps(model, tokenizer, examples, max_length)


def validation_figures(
    before: PairLogps, after: PairLogps, reference: PairLogps, beta: float
) -> ValidationFigures:
    """`reference`: the pairs under the run's reference (the starting policy for ORPO and
    SimPO, which have none): the implicit reward is measured against it."""

    def prefers_chosen(row: tuple[float, int, float, int]) -> bool:
        chosen, chosen_n, rejected, rejected_n = row
        return chosen / chosen_n > rejected / rejected_n

    growth = [(a[0] - a[2]) - (r[0] - r[2]) for a, r in zip(after, reference, strict=True)]
    n = len(before)
    return ValidationFigures(
        pairs=n,
        accuracy_before=sum(map(prefers_chosen, before)) / n,
        accuracy_after=sum(map(prefers_chosen, after)) / n,
        reward_accuracy=sum(1 for g in growth if g > 0) / n,
        reward_margin=beta * sum(growth) / n,
    )
