"""Thresholds of the rule filter and the verifier (PAPER.md §2 Phase 3), as named, overridable defaults.

Numbers marked "paper" are from PAPER.md §2 Phase 3; the others are this project's documented choices where
the paper names a rule without a number. `RuleConfig` carries them all; the pipeline maps its flags onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

from validators.patterns import LEAKAGE_LABELS

# paper, §2 Phase 3: "length, in teacher-tokenizer tokens: reasoning in [16, 256], answer in [2, 64]" (inclusive).
REASONING_TOKENS: tuple[int, int] = (16, 256)
ANSWER_TOKENS: tuple[int, int] = (2, 64)

# paper, §2 Phase 3: keep only when the verifier says "consistent" and confidence > 0.7 (strictly greater).
VERIFIER_MIN_CONFIDENCE = 0.7

# Choice (§2 Phase 3 "heavy repetition (repeated n-grams)"): word 3-grams; an output is repetitive when more than
# 20 % of its 3-gram occurrences repeat an earlier 3-gram of the same segment (reasoning, answer). One sentence
# written three times in a short reasoning crosses it; the handful of repeats of phrases like "the target image"
# in a normal 100-200 word chain of thought stays far below. Segments are counted separately because the answer
# legitimately restates the reasoning's conclusion. Below 10 3-grams in all there is too little text to judge.
REPETITION_NGRAM = 3
REPETITION_MAX_SHARE = 0.2
REPETITION_MIN_NGRAMS = 10

# Choice (§2 Phase 3 "non-English output rejected"), py3langid probabilities, measured on the examples in
# tests/validators/test_rules.py: the whole output (reasoning + answer) is judged when it has at least 40 UTF-8
# bytes, and must have P(en) >= 0.5. Each sentence of at least 30 bytes is judged too (mixed-language output),
# with a much lower bar, P(en) >= 1e-3: English sentences dense with foreign proper names ("Château de Chambord,
# Loir-et-Cher, France": 3e-3; "Neuschwanstein Castle near Füssen": 7e-2) pass, whole French/German/Spanish
# sentences (1e-4 .. 1e-7) and Chinese/Russian ones (< 1e-9) fail. Shorter texts (entity names) are not judged.
ENGLISH_MIN_PROB = 0.5
LANGUAGE_MIN_BYTES = 40
SENTENCE_ENGLISH_MIN_PROB = 1e-3
SENTENCE_MIN_BYTES = 30

# paper, §2 Phase 3: "CIR: answer identical to the source caption after normalisation": the CIR datasets.
CIR_DATASETS: tuple[str, ...] = ("cirr", "fashioniq")

# Teacher tokenizer: a Hugging Face tokenizer name or local path, or None for the approximate offline counter
# (validators.tokens.ApproxTokenizer). Set it to the teacher's tokenizer for counts that match the paper.
TOKENIZER_SPEC: str | None = None


@dataclass(frozen=True)
class RuleConfig:
    """Every knob of the rule filter; defaults are the values above."""

    reasoning_tokens: tuple[int, int] = REASONING_TOKENS
    answer_tokens: tuple[int, int] = ANSWER_TOKENS
    repetition_ngram: int = REPETITION_NGRAM
    repetition_max_share: float = REPETITION_MAX_SHARE
    repetition_min_ngrams: int = REPETITION_MIN_NGRAMS
    english_min_prob: float = ENGLISH_MIN_PROB
    language_min_bytes: int = LANGUAGE_MIN_BYTES
    sentence_english_min_prob: float = SENTENCE_ENGLISH_MIN_PROB
    sentence_min_bytes: int = SENTENCE_MIN_BYTES
    cir_datasets: tuple[str, ...] = CIR_DATASETS
    leakage_labels: tuple[str, ...] = LEAKAGE_LABELS
    tokenizer_spec: str | None = TOKENIZER_SPEC

    @property
    def tokenizer(self):
        """The teacher tokenizer for `tokenizer_spec`, loaded once per process."""
        from validators.tokens import get_tokenizer

        return get_tokenizer(self.tokenizer_spec)
