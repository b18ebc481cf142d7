"""What the two classifiers cost curation: every signal of the same documents computed with
`signals.toxicity_prob_classifier` = profanity_check and = none, side by side in one process (best
of 3 each, alternating), and the quality classifier (stage `quality`) trained on the top 10% by
textbook score against as many random documents and scoring every document. The goal: both
classifiers together at most 30% of signals + quality. Corpus: the built-in offline corpus's prose
and code (stdlib docstrings, pydoc topics, stdlib code), what `ingest` reads in the demo.

    python bench/signals_classifiers.py [--docs 9000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.ingest.builtin import units  # noqa: E402
from stages.quality.classifier import Features, fit  # noqa: E402
from stages.signals import Params, compute  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=9000)
    args = parser.parse_args()
    texts = [r.text for unit in units(["docstrings", "pydoc_topics", "stdlib_code"])
             for r in unit.read() if r.text][: args.docs]
    on, off = Params(), Params(toxicity_prob_classifier="none")
    best = {"on": float("inf"), "off": float("inf"), "quality": float("inf")}
    for _ in range(3):
        for name, params in (("off", off), ("on", on)):
            start = time.perf_counter()
            cols = compute(texts, params)
            best[name] = min(best[name], time.perf_counter() - start)
        start = time.perf_counter()
        ranked = np.argsort(-cols["textbook_score"], kind="stable")
        k = len(texts) // 10
        pos = ranked[:k]
        neg = np.random.default_rng(0).permutation(ranked[k:])[:k]
        labels = np.r_[np.ones(k), np.zeros(k)].astype(int)
        clf = fit([texts[i] for i in np.r_[pos, neg]], labels, Features(), 1.0, 0)
        trained = time.perf_counter()
        clf.score(texts)
        best["quality"] = min(best["quality"], time.perf_counter() - start)
        best["scoring"] = min(best.get("scoring", float("inf")), time.perf_counter() - trained)
    mb = sum(len(t.encode()) for t in texts) / 2**20
    print(f"docs: {len(texts)}")
    print(f"mb: {mb:.2f}")
    print(f"signals_seconds_classifier_off: {best['off']:.3f}")
    print(f"signals_seconds_classifier_on: {best['on']:.3f}")
    print(f"quality_classifier_seconds: {best['quality']:.3f}")
    print(f"quality_scoring_seconds: {best['scoring']:.3f}")
    print(f"classifier_share_of_signals: {(best['on'] - best['off']) / best['on']:.3f}")
    both = best["on"] - best["off"] + best["quality"]
    print(f"classifiers_share_of_signals_and_quality: {both / (best['on'] + best['quality']):.3f}")
    scoring = best["on"] - best["off"] + best["scoring"]
    print(f"classifier_scoring_share: {scoring / (best['on'] + best['scoring']):.3f}")


if __name__ == "__main__":
    main()
