"""Every reason code the validators emit, with what it means (one place; the dataset card lists them)."""

from __future__ import annotations

REASONS: dict[str, str] = {
    # format (validators.cot_format.format_problems)
    "format_empty": "the teacher output is empty",
    "format_missing_reasoning": "no <reasoning> tag pair",
    "format_missing_answer": "no <answer> tag pair",
    "format_unclosed_tag": "a <reasoning> or <answer> tag is opened and not closed, or closed and not opened",
    "format_repeated_tag": "more than one <reasoning> or <answer> pair",
    "format_wrong_order": "the answer comes before the reasoning",
    "format_nested_or_extra_text": "nested tags, or text outside the two tag pairs",
    # content rules (validators.rules)
    "prompt_leakage": "the output echoes prompt scaffolding (field labels, chat tokens, template fields, role text)",
    "reasoning_too_short": "reasoning has fewer teacher tokens than the minimum (16)",
    "reasoning_too_long": "reasoning has more teacher tokens than the maximum (256)",
    "answer_too_short": "answer has fewer teacher tokens than the minimum (2)",
    "answer_too_long": "answer has more teacher tokens than the maximum (64)",
    "repetitive": "too large a share of repeated word n-grams (degenerate looping)",
    "non_english": "the output, or one of its sentences, is not English",
    "refusal": "a refusal or assistant boilerplate ('As an AI…', 'I can't determine…')",
    "no_salient_keyword": "the answer shares no salient keyword with the instruction/query or the target text",
    "cir_edit_not_applied": "composed retrieval: the answer equals the source caption, so the edit was not applied",
    # deduplication (validators.dedup)
    "duplicate_answer": "another row of the same query has the same normalised answer; one copy is kept",
    # model filter (validators.verifier)
    "verifier_inconsistent": "the verifier judged the answer inconsistent with the target",
    "verifier_low_confidence": "the verifier's confidence is not above the threshold (0.7)",
    "verifier_unparseable": "the verifier's reply is missing or does not follow schemas/verifier_output",
}


def describe(code: str) -> str:
    """The description of a reason code; KeyError for an unknown one."""
    return REASONS[code]
