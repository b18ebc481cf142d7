"""Rule groups and their thresholds, defaulting to the published values.

A threshold's field name says what it does: `min_<signal>` removes documents below it,
`max_<signal>` above it, a boolean `<signal>` set to true removes documents where that flag is
set, and `languages` removes documents whose detected language is not listed. The signal column is
the group's prefix plus the name without `min_`/`max_`; `null` disables a rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from stages.params import StrictModel


class GopherQuality(StrictModel):
    """Gopher quality rules (Rae et al. 2021, MassiveText)."""

    prefix: ClassVar[str] = "gopher_"
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    max_mean_word_length: float | None = 10
    max_hash_ratio: float | None = 0.1
    max_ellipsis_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2


class GopherRepetition(StrictModel):
    """Gopher repetition rules (Rae et al. 2021, table A1)."""

    prefix: ClassVar[str] = "gopher_"
    max_dup_line_frac: float | None = 0.30
    max_dup_para_frac: float | None = 0.30
    max_dup_line_char_frac: float | None = 0.20
    max_dup_para_char_frac: float | None = 0.20
    max_top_2gram_char_frac: float | None = 0.20
    max_top_3gram_char_frac: float | None = 0.18
    max_top_4gram_char_frac: float | None = 0.16
    max_dup_5gram_char_frac: float | None = 0.15
    max_dup_6gram_char_frac: float | None = 0.14
    max_dup_7gram_char_frac: float | None = 0.13
    max_dup_8gram_char_frac: float | None = 0.12
    max_dup_9gram_char_frac: float | None = 0.11
    max_dup_10gram_char_frac: float | None = 0.10


class C4(StrictModel):
    """C4 page rules (Raffel et al. 2020); its line removals count toward `sentences`."""

    prefix: ClassVar[str] = "c4_"
    min_sentences: int | None = 5
    lorem_ipsum: bool = True
    curly_bracket: bool = True


class FineWeb(StrictModel):
    """FineWeb's own quality rules (Penedo et al. 2024)."""

    prefix: ClassVar[str] = "fineweb_"
    min_line_punct_ratio: float | None = 0.12
    max_short_line_ratio: float | None = 0.67
    max_dup_line_char_ratio: float | None = 0.01
    max_list_ratio: float | None = 0.3


class Language(StrictModel):
    """Language ID; FineWeb keeps English at score >= 0.65 (there with fastText, here py3langid)."""

    prefix: ClassVar[str] = ""
    languages: list[str] | None = ["en"]
    min_lang_score: float | None = 0.65


class Toxicity(StrictModel):
    """Toxicity ceilings: `max_toxicity` on the word-list score (0 is C4's bad-words rule),
    `max_toxicity_prob` on the classifier's probability."""

    prefix: ClassVar[str] = ""
    max_toxicity: float | None = None
    max_toxicity_prob: float | None = 0.8


class Code(StrictModel):
    """Code rules: The Stack's line-length and alphanumeric limits, SantaCoder's comment ratio."""

    prefix: ClassVar[str] = "code_"
    max_longest_line: int | None = 1000
    max_mean_line_length: float | None = 100
    min_alnum_frac: float | None = 0.25
    min_comment_frac: float | None = 0.01
    max_comment_frac: float | None = 0.8


class Quality(StrictModel):
    """The quality classifier's score (stage `quality`): keep documents scoring at least
    `min_score`, and/or each domain's `top_fraction` by score among the documents that pass
    every other rule of the domain (DCLM keeps the top 10% after its heuristics)."""

    prefix: ClassVar[str] = "quality_"
    min_score: float | None = Field(None, ge=0, le=1)
    top_fraction: float | None = Field(None, gt=0, le=1)


GROUPS: dict[str, type[StrictModel]] = {
    "gopher_quality": GopherQuality,
    "gopher_repetition": GopherRepetition,
    "c4": C4,
    "fineweb": FineWeb,
    "language": Language,
    "toxicity": Toxicity,
    "code": Code,
    "quality": Quality,
}


@dataclass(frozen=True)
class Rule:
    name: str  # "<group>.<field>"
    column: str
    kind: str  # "min", "max", "flag", "in", or "top" (a fraction, resolved per domain to "min")
    threshold: Any

    def fails(self, table: pa.Table) -> np.ndarray:
        if self.kind == "top":
            raise ValueError(f"{self.name}: a top fraction needs its per-domain cut (filter.cuts)")
        if self.kind == "in":
            return ~np.isin(np.array(table[self.column].to_pylist(), dtype=object),
                            list(self.threshold))
        values = table[self.column].to_numpy(zero_copy_only=False)
        if self.kind == "flag":
            return values.astype(bool)
        if self.kind == "min":
            return values < self.threshold
        return values > self.threshold


def rules_of(group: str, model: StrictModel) -> list[Rule]:
    """The active rules of one group, in declaration order."""
    rules = []
    for field, value in model:
        if value is None or value is False:
            continue
        if field == "top_fraction":
            rules.append(Rule(f"{group}.{field}", model.prefix + "score", "top", value))
        elif field == "languages":
            rules.append(Rule(f"{group}.{field}", "lang", "in", tuple(value)))
        elif field.startswith(("min_", "max_")):
            rules.append(Rule(f"{group}.{field}", model.prefix + field[4:], field[:3], value))
        else:
            rules.append(Rule(f"{group}.{field}", model.prefix + field, "flag", True))
    return rules
