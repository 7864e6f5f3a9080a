"""The model filter's decision (PAPER.md §2 Phase 3): keep only when the verifier says "consistent" with
confidence > 0.7. The verdict follows schemas/verifier_output.schema.json."""

from __future__ import annotations

import json
import re
from functools import cache

from validators.defaults import VERIFIER_MIN_CONFIDENCE

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


@cache
def _schema_validator():
    import schemas

    return schemas.validator("verifier_output")


def parse_verdict(text: str | None) -> dict | None:
    """The JSON object in a verifier reply (bare, or inside a code fence / prose), or None."""
    if not text:
        return None
    m = _JSON_OBJECT.search(text)
    if m is None:
        return None
    try:
        verdict = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    return verdict if isinstance(verdict, dict) else None


def verifier_keeps(verdict: dict | None, threshold: float = VERIFIER_MIN_CONFIDENCE) -> list[str]:
    """Reason codes, [] to keep: verifier_unparseable, verifier_inconsistent or verifier_low_confidence."""
    if not isinstance(verdict, dict) or not _schema_validator().is_valid(verdict):
        return ["verifier_unparseable"]
    if verdict["decision"] != "consistent":
        return ["verifier_inconsistent"]
    if not verdict["confidence"] > threshold:
        return ["verifier_low_confidence"]
    return []
