import pytest

from validators.reasons import REASONS
from validators.verifier import parse_verdict, verifier_keeps


@pytest.mark.parametrize(
    "verdict, expected",
    [
        ({"decision": "consistent", "confidence": 0.71}, []),
        ({"decision": "consistent", "confidence": 1.0, "rationale": "Describes the target."}, []),
        ({"decision": "consistent", "confidence": 0.7}, ["verifier_low_confidence"]),  # strictly greater
        ({"decision": "consistent", "confidence": 0.2}, ["verifier_low_confidence"]),
        ({"decision": "inconsistent", "confidence": 0.99}, ["verifier_inconsistent"]),
        ({"decision": "inconsistent", "confidence": 0.1}, ["verifier_inconsistent"]),
        (None, ["verifier_unparseable"]),
        ({}, ["verifier_unparseable"]),
        ({"decision": "consistent"}, ["verifier_unparseable"]),
        ({"decision": "yes", "confidence": 0.9}, ["verifier_unparseable"]),
        ({"decision": "consistent", "confidence": 1.5}, ["verifier_unparseable"]),
        ({"decision": "consistent", "confidence": "0.9"}, ["verifier_unparseable"]),
        ("consistent", ["verifier_unparseable"]),
    ],
)
def test_verifier_decision(verdict, expected):
    assert verifier_keeps(verdict) == expected
    assert all(code in REASONS for code in expected)


def test_threshold_is_overridable():
    v = {"decision": "consistent", "confidence": 0.85}
    assert verifier_keeps(v, threshold=0.9) == ["verifier_low_confidence"]
    assert verifier_keeps(v, threshold=0.8) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"decision": "consistent", "confidence": 0.9}', {"decision": "consistent", "confidence": 0.9}),
        ('```json\n{"decision": "inconsistent", "confidence": 0.8, "rationale": "wrong {colour}"}\n```',
         {"decision": "inconsistent", "confidence": 0.8, "rationale": "wrong {colour}"}),
        ("The answer matches the target.", None),
        ('{"decision": "consistent", "confidence": }', None),
        ("[1, 2]", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected
