"""DPO batches grouped by length where that saves padding, and a plain shuffle where not."""

from __future__ import annotations

import random

from alignment.engine.trainers import (
    LengthGroupedSampler,
    length_grouping_pays,
    padded_tokens,
)


def test_grouping_is_used_only_where_it_saves_a_tenth_of_the_padded_tokens() -> None:
    rng = random.Random(0)
    about_one_length = [220 + rng.randint(-5, 5) for _ in range(32)]
    mixed = [rng.choice([60, 120, 240, 480]) for _ in range(64)]
    assert not length_grouping_pays(about_one_length, 4, 4, seed=0)
    assert length_grouping_pays(mixed, 4, 4, seed=0)


def test_each_epoch_is_another_shuffle_of_like_length_batches_reproducible_by_seed() -> None:
    rng = random.Random(1)
    lengths = [rng.choice([60, 120, 240, 480]) for _ in range(64)]
    sampler = LengthGroupedSampler(lengths, group=4, seed=7)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(64))  # every row once an epoch
    assert first != second  # reshuffled
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed run sees the order it would have seen
    assert list(LengthGroupedSampler(lengths, group=4, seed=7)) == first
    shuffled = list(range(64))
    random.Random(2).shuffle(shuffled)
    assert padded_tokens(lengths, first, 4) < 0.8 * padded_tokens(lengths, shuffled, 4)
