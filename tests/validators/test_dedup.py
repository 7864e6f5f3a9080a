import itertools

import pytest

from validators.dedup import DUPLICATE_REASON, dedup_key, normalize_answer, pick_kept, query_content_key
from validators.reasons import REASONS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two golden retrievers, playing on a beach!", "two golden retrievers playing on a beach"),
        ("  The   Moskva\tRiver. ", "the moskva river"),
        ("Saint Basil\u2019s Cathedral", "saint basils cathedral"),
        ("A red t-shirt (size M)", "a red t shirt size m"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_dedup_key_ignores_case_punctuation_and_spacing():
    q = query_content_key("cirr", 7, "have two dogs on the beach", "cirr_images/train/1.png")
    assert dedup_key(q, "Two golden retrievers on a beach.") == dedup_key(q, "two golden  retrievers on a beach")
    assert dedup_key(q, "Two golden retrievers on a beach.") != dedup_key(q, "Three golden retrievers on a beach.")


def test_same_answer_for_different_queries_is_not_a_duplicate():
    a = query_content_key("oven", 6, "What is this building?", "oven_images/1.jpg")
    b = query_content_key("oven", 8, "What is this building?", "oven_images/1.jpg")  # other task
    c = query_content_key("oven", 6, "What is this building?", "oven_images/2.jpg")  # other image
    keys = {dedup_key(k, "The Château de Chambord.") for k in (a, b, c)}
    assert len(keys) == 3


def test_query_content_key_normalises_the_text():
    assert query_content_key("cirr", 7, "Have two dogs!", "x.png") == query_content_key("cirr", 7, "have two dogs", "x.png")


ROWS = [
    {"id": 10, "qid": "8:1", "answer": "Two dogs on a beach."},
    {"id": 9, "qid": "8:1", "answer": "two dogs on a beach"},
    {"id": 11, "qid": "8:1", "answer": "Two dogs, on a beach"},
]


def test_pick_kept_is_independent_of_input_order():
    results = {(k["id"], tuple(r["id"] for r in d)) for p in itertools.permutations(ROWS) for k, d in [pick_kept(list(p))]}
    assert results == {(9, (10, 11))}  # ids compare as numbers: 9 < 10


def test_pick_kept_string_ids_and_ties():
    rows = [{"id": "b", "x": 1}, {"id": "a", "x": 2}, {"id": "a", "x": 1}]
    outcomes = {repr(pick_kept(list(p))) for p in itertools.permutations(rows)}
    assert len(outcomes) == 1
    kept, dropped = pick_kept(rows)
    assert kept == {"id": "a", "x": 1} and len(dropped) == 2


def test_pick_kept_single_and_empty():
    assert pick_kept([ROWS[0]]) == (ROWS[0], [])
    with pytest.raises(ValueError):
        pick_kept([])


def test_duplicate_reason_is_described():
    assert DUPLICATE_REASON in REASONS
