"""Informative pairs: which two of a prompt's K samples to show the annotators.

Strategies (SELECTIONS):
- random: two of the K at random.
- most_different: the two whose texts differ most (word overlap and length), so the
  judgment is about a visible difference, not two near-copies.
- reward_gap: the two the current policy's implicit reward, beta * (log pi(y) - log
  pi_ref(y)) against the base model, tells furthest apart. A human label there checks the
  policy where it is most sure of a preference; the ones it contradicts teach the most.
- winner_stays: a ladder. The first two samples meet; after each decided pair the winner
  (after a tie, the incumbent) meets a sample it has not met (`ladder_next`), until it has met
  them all. A preference that most pairs tie on (a rare property) is found wherever one of
  the K has it, and every sample without it then loses to it: up to K - 1 pairs a prompt
  where adjacent pairs find one in K/2 tries.

Two responses both cut off at the token limit are not paired while another pair is there:
neither is a complete answer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from core.text import words

SELECTIONS = ("random", "most_different", "reward_gap", "winner_stays")


@dataclass(frozen=True)
class Selected:
    first: int
    second: int
    score: float  # the strategy's measure of the pair (distance, reward gap; 0 for random)


def text_distance(a: str, b: str) -> float:
    """0 for the same words at the same length, up to 1: half the Jaccard distance of the
    two word sets, half the relative difference in length."""
    words_a, words_b = set(words(a)), set(words(b))
    union = words_a | words_b
    jaccard = 1 - len(words_a & words_b) / len(union) if union else 0.0
    longest = max(len(a), len(b))
    length = abs(len(a) - len(b)) / longest if longest else 0.0
    return 0.5 * jaccard + 0.5 * length


def pair_select(
    strategy: str,
    texts: Sequence[str],
    *,
    rng: random.Random,
    rewards: Sequence[float] | None = None,
    complete: Sequence[bool] | None = None,
) -> Selected:
    """The two of `texts` to compare (indices, first < second). Two identical texts are
    never picked while a different one is there, nor two cut off ones (`complete` False)
    while a pair with a complete one is."""
    if strategy not in SELECTIONS:
        raise ValueError(f"unknown pair selection {strategy!r}; known: {', '.join(SELECTIONS)}")
    if len(texts) < 2:
        raise ValueError("a pair needs at least two samples")
    differing = [
        (i, j)
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if texts[i].strip() != texts[j].strip()
    ]
    candidates = (
        [(i, j) for i, j in differing if complete is None or complete[i] or complete[j]]
        or differing
        or [(0, 1)]
    )
    if strategy == "winner_stays":
        # The ladder's first rung: the first two samples (in sample order) worth comparing.
        return Selected(*candidates[0], 0.0)
    if strategy == "random":
        i, j = rng.choice(candidates)
        return Selected(i, j, 0.0)
    if strategy == "most_different":
        scored = [(text_distance(texts[i], texts[j]), i, j) for i, j in candidates]
    else:
        if rewards is None or len(rewards) != len(texts):
            raise ValueError("reward_gap needs one implicit reward per sample")
        scored = [(abs(rewards[i] - rewards[j]), i, j) for i, j in candidates]
    best = max(score for score, _, _ in scored)
    # Ties broken at random, so equal scores do not always favour the first samples.
    score, i, j = rng.choice([t for t in scored if t[0] == best])
    return Selected(i, j, round(score, 6))


def ladder_next(
    champion: int,
    texts: Sequence[str],
    *,
    met: Set[frozenset[int]],
    shown: Set[int],
    complete: Sequence[bool] | None = None,
) -> int | None:
    """winner_stays: the sample the `champion` meets next (an index of `texts`), or None when
    it has met every sample worth meeting. Not one it has `met`, nor its own text, nor (when
    both are cut off) another cut-off one; samples never `shown` first, then the rest, each
    in sample order."""
    if not 0 <= champion < len(texts):
        raise ValueError(f"no sample {champion} among {len(texts)}")
    own = texts[champion].strip()
    cut_off = complete is not None and not complete[champion]
    options = [
        i
        for i in range(len(texts))
        if i != champion
        and frozenset((champion, i)) not in met
        and texts[i].strip() != own
        and not (cut_off and complete is not None and not complete[i])
    ]
    fresh = [i for i in options if i not in shown]
    return next(iter(fresh or options), None)


def implicit_rewards(
    *,
    model_path: str,
    adapter: str,
    adapter_sha256: str | None,
    items: Sequence[tuple[Sequence[Mapping[str, str]], str, bool]],
    beta: float = 0.1,
    max_length: int = 1024,
    trust_remote_code: bool = False,
) -> list[float]:
    """beta * (log pi(y|x) - log pi_base(y|x)) per (prompt messages, completion, complete):
    the policy is the base with `adapter` (hash-checked), its reference the base alone; a
    completion cut off at the token limit is scored without the end of its turn."""
    from peft import PeftModel

    from alignment.engine.generation import adapter_validate, generation_dtype
    from alignment.engine.scoring import completion_logps
    from alignment.engine.sources import model_load, tokenizer_load

    tokenizer = tokenizer_load(model_path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "right"
    base = model_load(
        model_path,
        quantize_4bit=False,
        trust_remote_code=trust_remote_code,
        dtype=generation_dtype(),
    )
    adapter_validate(adapter, sha256=adapter_sha256)
    model = PeftModel.from_pretrained(base, adapter)
    policy = completion_logps(model, tokenizer, items, max_length)
    with model.disable_adapter():
        reference = completion_logps(model, tokenizer, items, max_length)
    return [beta * (p - r) for (p, _), (r, _) in zip(policy, reference, strict=True)]
