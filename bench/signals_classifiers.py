"""What the toxicity classifier costs the signals stage: every signal of the same documents
computed with `signals.toxicity_prob_classifier` = profanity_check and = none, side by side in
one process (best of 3 each, alternating). Corpus: the built-in offline corpus's prose and code
(stdlib docstrings, pydoc topics, stdlib code), what `ingest` reads in the demo.

    python bench/signals_classifiers.py [--docs 9000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.ingest.builtin import units  # noqa: E402
from stages.signals import Params, compute  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=9000)
    args = parser.parse_args()
    texts = [r.text for unit in units(["docstrings", "pydoc_topics", "stdlib_code"])
             for r in unit.read() if r.text][: args.docs]
    on, off = Params(), Params(toxicity_prob_classifier="none")
    best = {"on": float("inf"), "off": float("inf")}
    for _ in range(3):
        for name, params in (("off", off), ("on", on)):
            start = time.perf_counter()
            compute(texts, params)
            best[name] = min(best[name], time.perf_counter() - start)
    mb = sum(len(t.encode()) for t in texts) / 2**20
    print(f"docs: {len(texts)}")
    print(f"mb: {mb:.2f}")
    print(f"signals_seconds_classifier_off: {best['off']:.3f}")
    print(f"signals_seconds_classifier_on: {best['on']:.3f}")
    print(f"classifier_share_of_signals: {(best['on'] - best['off']) / best['on']:.3f}")


if __name__ == "__main__":
    main()
