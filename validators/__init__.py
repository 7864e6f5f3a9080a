"""The paper's rule filter, deduplication and verifier decision (PAPER.md §2 Phase 3): pure functions.

    ctx = CotContext.build(output, dataset=..., task_id=..., instruction=..., query_txt=..., target_txt=...)
    reasons = apply_rules(ctx, RuleConfig(tokenizer_spec=...))      # [] = passes the rule filter
    reasons = verifier_keeps(verdict)                                 # [] = the verifier keeps it
Reason codes and their descriptions: validators.reasons.REASONS.
"""

from validators.dedup import DUPLICATE_REASON, dedup_key, normalize_answer, pick_kept, query_content_key
from validators.defaults import RuleConfig
from validators.reasons import REASONS
from validators.rules import RULES, CotContext, apply_rules
from validators.verifier import parse_verdict, verifier_keeps

__all__ = [
    "DUPLICATE_REASON", "REASONS", "RULES", "CotContext", "RuleConfig", "apply_rules", "dedup_key",
    "normalize_answer", "parse_verdict", "pick_kept", "query_content_key", "verifier_keeps",
]
