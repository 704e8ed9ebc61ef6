"""The diversity statistics against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from annotate import diversity
from core.text import words as text_words


def _blobs(k: int, per: int, d: int = 16, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:k]
    points = np.concatenate([c + spread * rng.standard_normal((per, d)) for c in centres])
    return diversity.normalise(points)


def test_vendi_counts_effective_distinct_items() -> None:
    same = diversity.normalise(np.ones((50, 8)))
    assert diversity.vendi_score(same) == pytest.approx(1.0)
    orthogonal = np.eye(8, dtype=np.float32)
    assert diversity.vendi_score(orthogonal) == pytest.approx(8.0)
    # Two equal groups of identical items: two effective items.
    two = np.concatenate([np.tile(np.eye(4)[0], (10, 1)), np.tile(np.eye(4)[1], (10, 1))])
    assert diversity.vendi_score(two.astype(np.float32)) == pytest.approx(2.0)


def test_it_chooses_k_from_the_data_and_labels_clusters() -> None:
    points = _blobs(k=3, per=40)
    clustering = diversity.clusters_fit(points)
    assert clustering.k == 3
    assert sorted(np.bincount(clustering.labels).tolist()) == [40, 40, 40]
    assert clustering.silhouette is not None and clustering.silhouette > 0.8
    typical = diversity.typical_rows(points, clustering.labels, clustering.centroids)
    assert all(len(rows) == 3 for rows in typical)
    new = diversity.clusters_assign(points[:5], clustering.centroids)
    assert new.tolist() == clustering.labels[:5].tolist()


def test_evenness_is_one_when_even_and_falls_when_one_dominates() -> None:
    assert diversity.evenness([10, 10, 10]) == pytest.approx(1.0)
    assert diversity.evenness([100, 1, 1]) < 0.2
    assert diversity.evenness([5]) is None


def test_near_duplicates_are_found_within_clusters() -> None:
    points = _blobs(k=2, per=10, spread=0.3)
    points = np.concatenate([points, points[:1] * 1.0])  # row 20 repeats row 0
    labels = diversity.clusters_fit(points).labels
    count, found = diversity.near_duplicates(points, labels, threshold=0.999)
    assert count == 1 and found[0][:2] == (0, 20) and found[0][2] == pytest.approx(1.0)
    # Rows of one group (exact duplicates) are no near-duplicate pair: not counted, not listed.
    same = np.arange(len(points))
    same[20] = same[0]
    assert diversity.near_duplicates(points, labels, threshold=0.999, same=same) == (0, [])


def test_prompt_words_are_letters_only_and_unicode_folded() -> None:
    # The statistics' words: two letters or more, "ﬁ" and "fi", "ß" and "ss" the same.
    assert diversity.words("The ﬁne Straße, 42 x_y") == ["the", "fine", "strasse"]
    # The engine's (core.text defaults): every run of word characters, lower-cased only.
    assert text_words("The ﬁne Straße, 42 x_y") == ["the", "ﬁne", "straße", "42", "x_y"]


def test_distinct_n_key_terms_and_language() -> None:
    assert diversity.distinct_n(["a cat sat", "a cat sat"], 1) == pytest.approx(3 / 6)
    assert diversity.distinct_n(["the cat sat on the mat"], 2) == pytest.approx(1.0)
    assert diversity.distinct_n([""], 1) is None
    texts = ["python code bug", "python function code", "bake bread recipe", "bread oven bake"]
    terms = diversity.key_terms(texts, np.array([0, 0, 1, 1]), 2, top=2)
    assert set(terms[0]) == {"python", "code"} and set(terms[1]) == {"bake", "bread"}
    assert diversity.language_guess("What is the capital of France?") == "English"
    assert diversity.language_guess("Quelle est la capitale de la France ?") == "French"
    assert diversity.language_guess("Какая столица Франции?") == "Cyrillic"
    assert diversity.language_guess("法国的首都是哪里") == "CJK"
    assert diversity.histogram([1, 2, 3], bins=2)["counts"] == [1, 2]
    assert diversity.histogram([]) == {"edges": [], "counts": []}
