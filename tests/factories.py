"""Build comparisons the way the app does: through the services."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import numpy as np

from annotate.diversity import words
from annotate.models import Comparison, Policy, Project, Prompt
from annotate.services.comparisons import comparison_create
from annotate.services.prompts import ResponseInput, policy_create, responses_create


def policy_for(project: Project, name: str = "imported") -> Policy:
    return Policy.objects.filter(project=project, name=name).first() or policy_create(
        project=project, name=name, kind="external"
    )


def comparison_make(
    prompt: Prompt,
    texts: tuple[str, str] = ("Short answer.", "A much longer answer with detail."),
    *,
    round_number: int = 1,
    purpose: str = "train",
    seed: int = 0,
    policy: Policy | None = None,
) -> Comparison:
    policy = policy or policy_for(prompt.project)
    first, second = responses_create(
        policy=policy,
        rows=[
            ResponseInput(prompt_id=prompt.pk, text=text, generation_params={}) for text in texts
        ],
    )
    return comparison_create(
        response_a=first,
        response_b=second,
        round_number=round_number,
        purpose=purpose,
        rng=random.Random(seed),
    )


def embed_bag_of_words(texts: Sequence[str]) -> np.ndarray:
    """A deterministic stand-in for the packaged embedder: a hashed bag of words, so texts
    sharing words get similar rows (the real model takes seconds to load)."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in words(text):
            out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
    return out
