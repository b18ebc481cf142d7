"""A linear n-gram quality classifier (DCLM / FineWeb-Edu style): features, training, scoring.

DCLM's quality filter is a fastText bigram classifier, a linear model over hashed word uni- and
bigrams. This is that model through scikit-learn: `HashingVectorizer` (lower-cased word n-grams
hashed into `2**hash_bits` buckets, l2-normalised counts) and an L2 logistic regression solved by
liblinear. scikit-learn rather than a fastText wheel: liblinear's result is a pure function of the
data and the seed (the stage's outputs must be byte-identical run to run; fastText's Hogwild
training is so only on one thread), it scores a batch as one sparse matrix product, and it is
already installed (alt-profanity-check's model is a scikit-learn one).

Saved as `<domain>.npy` (the weights, float32) plus the features and intercept in JSON: plain
files with stable bytes, loadable without pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from stages.params import StrictModel


class Features(StrictModel):
    ngrams: int = Field(2, ge=1, le=3, description="word n-grams 1..ngrams (DCLM: bigrams)")
    hash_bits: int = Field(18, ge=10, le=24, description="2**hash_bits feature buckets")
    max_chars: int = Field(10_000, ge=100, description="leading characters of a document read")

    def vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(n_features=2**self.hash_bits, ngram_range=(1, self.ngrams),
                                 alternate_sign=False, norm="l2", dtype=np.float32)

    def matrix(self, texts: list[str]):
        return self.vectorizer().transform([t[: self.max_chars] for t in texts])

    def bucket(self, ngram: str) -> int:
        """The feature index of one n-gram (what `HashingVectorizer` computes for it)."""
        from sklearn.utils import murmurhash3_32

        return abs(murmurhash3_32(ngram, seed=0)) % 2**self.hash_bits


@dataclass(frozen=True)
class Classifier:
    """P(high quality | text) = sigmoid(weights . features(text) + intercept)."""

    features: Features
    weights: np.ndarray  # float32, one per feature bucket
    intercept: float

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        logits = self.features.matrix(texts) @ self.weights.astype(np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, directory: Path, name: str) -> None:
        np.save(directory / f"{name}.npy", self.weights, allow_pickle=False)
        meta = {"features": self.features.model_dump(), "intercept": self.intercept}
        (directory / f"{name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path, name: str) -> Classifier:
        meta = json.loads((directory / f"{name}.json").read_text())
        weights = np.load(directory / f"{name}.npy", allow_pickle=False)
        return cls(Features(**meta["features"]), weights, float(meta["intercept"]))


def fit(texts: list[str], labels: np.ndarray, features: Features, c: float,
        seed: int) -> Classifier:
    """Logistic regression on the hashed n-grams, classes weighted to balance."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, solver="liblinear", class_weight="balanced",
                               random_state=seed, max_iter=1000)
    model.fit(features.matrix(texts), labels)
    return Classifier(features, model.coef_[0].astype(np.float32), float(model.intercept_[0]))


@dataclass(frozen=True)
class HeldOut:
    docs: int
    positives: int
    precision: float | None
    recall: float | None
    f1: float | None
    roc_auc: float | None

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def held_out(scores: np.ndarray, labels: np.ndarray) -> HeldOut:
    """Precision / recall / F1 at 0.5 and ROC AUC (None where a class is missing)."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    both = len(set(labels.tolist())) == 2
    p, r, f, _ = precision_recall_fscore_support(labels, scores >= 0.5, average="binary",
                                                 zero_division=0)
    return HeldOut(len(labels), int(labels.sum()), float(p), float(r), float(f),
                   float(roc_auc_score(labels, scores)) if both else None)


def top_ngrams(clf: Classifier, texts: list[str], k: int) -> dict[str, list[str]]:
    """The k n-grams of `texts` with the largest and the smallest weights: what the classifier
    learned to reward and to penalise (hash collisions aside)."""
    analyze = clf.features.vectorizer().build_analyzer()
    seen = sorted({g for t in texts for g in analyze(t[: clf.features.max_chars])})
    weight = {g: float(clf.weights[clf.features.bucket(g)]) for g in seen}
    ranked = sorted(seen, key=lambda g: (-weight[g], g))
    return {"positive": ranked[:k], "negative": ranked[::-1][:k]}
