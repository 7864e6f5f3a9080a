"""The paper's rule filter (PAPER.md §2 Phase 3), one pure function per rule.

Each rule is `(ctx: CotContext, cfg: RuleConfig) -> list[str]` of reason codes (validators.reasons), [] = pass.
`apply_rules` runs them in `RULES` order; when the format rule fails the content rules are skipped.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from validators.cot_format import format_problems, split_cot
from validators.dedup import normalize_answer
from validators.defaults import RuleConfig
from validators.patterns import (
    ENGLISH_MARKER_SHARE,
    ENGLISH_MARKERS,
    FOREIGN_FUNCTION_WORDS,
    LEAKAGE_PATTERNS,
    REFUSAL_PATTERNS,
    STOP_WORDS,
    compile_any,
)


@dataclass(frozen=True)
class CotContext:
    """What the rules look at for one teacher output.

    `target_txt`: the positive candidate's text (InfoSeek/OVEN: the entity's title/summary; CIR: usually None).
    `source_caption` (CIR only): a caption of the reference image when one is known, e.g. the text of the pool
    candidate with the query's image, or a caption in `query_src_content`; None skips the CIR rule.
    `reasoning`/`answer` come from `split_cot(output)`; use `CotContext.build` to fill them."""

    dataset: str
    task_id: int
    instruction: str
    query_txt: str | None
    target_txt: str | None
    source_caption: str | None
    output: str
    reasoning: str = ""
    answer: str = ""

    @classmethod
    def build(
        cls,
        output: str,
        *,
        dataset: str,
        task_id: int,
        instruction: str = "",
        query_txt: str | None = None,
        target_txt: str | None = None,
        source_caption: str | None = None,
    ) -> CotContext:
        reasoning, answer = split_cot(output or "") or ("", "")
        return cls(dataset, task_id, instruction, query_txt, target_txt, source_caption, output or "",
                   reasoning, answer)


Rule = Callable[[CotContext, RuleConfig], list[str]]


def _straight(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def check_format(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """Exactly one reasoning pair, then one answer pair, nothing else (validators.cot_format)."""
    return format_problems(ctx.output)


@cache
def _leakage_regex(labels: tuple[str, ...]) -> re.Pattern[str]:
    names = "|".join(re.escape(label).replace(r"\ ", r"\s+") for label in sorted(labels, key=len, reverse=True))
    line_label = rf"^[ \t*#>-]*(?:{names})[ \t]*:" if names else r"(?!)"
    return re.compile(f"(?:{line_label})|{compile_any(LEAKAGE_PATTERNS).pattern}", re.IGNORECASE | re.MULTILINE)


def check_leakage(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """A line starting with a prompt field label, or chat/template material anywhere."""
    regex = _leakage_regex(cfg.leakage_labels)
    return ["prompt_leakage"] if any(regex.search(s) for s in (ctx.reasoning, ctx.answer)) else []


def _length(text: str, bounds: tuple[int, int], name: str, cfg: RuleConfig) -> list[str]:
    n = cfg.tokenizer.count(text)
    if n < bounds[0]:
        return [f"{name}_too_short"]
    return [f"{name}_too_long"] if n > bounds[1] else []


def check_reasoning_length(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """Reasoning within cfg.reasoning_tokens (inclusive) in teacher tokens."""
    return _length(ctx.reasoning, cfg.reasoning_tokens, "reasoning", cfg)


def check_answer_length(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """Answer within cfg.answer_tokens (inclusive) in teacher tokens."""
    return _length(ctx.answer, cfg.answer_tokens, "answer", cfg)


_WORD = re.compile(r"[^\W_]+")


def repeated_share(segments: list[str], n: int) -> tuple[float, int]:
    """(share of word n-gram occurrences repeating an earlier one of the same segment, number of n-grams)."""
    repeats = total = 0
    for text in segments:
        words = _WORD.findall(text.lower())
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total += sum(grams.values())
        repeats += sum(c - 1 for c in grams.values())
    return (repeats / total if total else 0.0), total


def check_repetition(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """Heavy repetition of word n-grams over reasoning + answer."""
    share, total = repeated_share([ctx.reasoning, ctx.answer], cfg.repetition_ngram)
    return ["repetitive"] if total >= cfg.repetition_min_ngrams and share > cfg.repetition_max_share else []


@cache
def _language_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def english_probability(text: str) -> float:
    """py3langid's normalised probability that `text` is English."""
    return dict(_language_identifier().rank(text)).get("en", 0.0)


_SENTENCE = re.compile(r"[^.!?\n。！？]+[.!?。！？]*")
_ASCII_WORD = re.compile(r"[A-Za-z']+")


def plainly_english(text: str) -> bool:
    """True when a text (a sentence, or a whole answer) needs no language identification of its own: ASCII only,
    no function word of a language the rule rejects, and at least ENGLISH_MARKER_SHARE of its words English-only
    function words. Anything else (accents, other scripts, a Spanish "con", a German "und", too few English
    markers) is judged by py3langid as before; this only saves the call for texts no threshold would reject."""
    if not text.isascii():
        return False
    words = _ASCII_WORD.findall(text.lower())
    if not words or any(w in FOREIGN_FUNCTION_WORDS for w in words):
        return False
    return sum(w in ENGLISH_MARKERS for w in words) >= ENGLISH_MARKER_SHARE * len(words)


def check_language(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """Non-English output: the whole text, or any single long-enough sentence (mixed-language output).

    py3langid is asked only where the text gives a reason to: about the whole text unless it is plainly English
    as a whole (plainly_english: ASCII, no foreign function word, a fifth English function words, which no
    threshold of the rule would reject), and about a sentence only when that sentence is not plainly English.
    An ordinary English answer costs no call; a Spanish, German or mixed one is judged by py3langid as before."""
    text = f"{ctx.reasoning}\n{ctx.answer}".strip()
    if len(text.encode()) >= cfg.language_min_bytes and not plainly_english(text) and (
        english_probability(text) < cfg.english_min_prob
    ):
        return ["non_english"]
    for sentence in _SENTENCE.findall(text):
        sentence = sentence.strip()
        if len(sentence.encode()) >= cfg.sentence_min_bytes and not plainly_english(sentence) and (
            english_probability(sentence) < cfg.sentence_english_min_prob
        ):
            return ["non_english"]
    return []


_REFUSAL = compile_any(REFUSAL_PATTERNS)


def check_refusal(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """Refusals and assistant boilerplate anywhere in reasoning or answer."""
    return ["refusal"] if any(_REFUSAL.search(_straight(s)) for s in (ctx.reasoning, ctx.answer)) else []


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def salient_keywords(text: str | None) -> set[str]:
    """Lower-cased, accent-free, plural-stripped words of `text` that are not stop words."""
    if not text:
        return set()
    folded = unicodedata.normalize("NFKD", _straight(text).lower())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).replace("'", "")
    words = (w for w in _WORD.findall(folded) if w not in STOP_WORDS and (len(w) > 1 or w.isdigit()))
    return {_stem(w) for w in words} - STOP_WORDS


def check_salient_keyword(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """The answer shares a salient keyword with the instruction/query text or the target text.

    Not judged (passes) when those texts have no salient keyword at all: nothing could be matched."""
    sources = salient_keywords(ctx.instruction) | salient_keywords(ctx.query_txt) | salient_keywords(ctx.target_txt)
    if not sources:
        return []
    return [] if salient_keywords(ctx.answer) & sources else ["no_salient_keyword"]


def check_cir_edit_applied(ctx: CotContext, cfg: RuleConfig) -> list[str]:
    """CIR datasets: the answer must differ from the source caption after normalisation."""
    if ctx.dataset not in cfg.cir_datasets or not ctx.source_caption:
        return []
    same = normalize_answer(ctx.answer) == normalize_answer(ctx.source_caption)
    return ["cir_edit_not_applied"] if same else []


RULES: dict[str, Rule] = {
    "format": check_format,
    "prompt_leakage": check_leakage,
    "reasoning_length": check_reasoning_length,
    "answer_length": check_answer_length,
    "repetition": check_repetition,
    "language": check_language,
    "refusal": check_refusal,
    "salient_keyword": check_salient_keyword,
    "cir_edit": check_cir_edit_applied,
}


def apply_rules(ctx: CotContext, cfg: RuleConfig | None = None) -> list[str]:
    """All failing reason codes in RULES order (the first is the primary one); [] = the output passes."""
    cfg = cfg or RuleConfig()
    problems = check_format(ctx, cfg)
    if problems:
        return problems
    return [code for name, rule in RULES.items() if name != "format" for code in rule(ctx, cfg)]
