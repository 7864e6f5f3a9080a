import pytest

from pipeline.mbeir.qrels import parse_qrels, parse_qrels_with_tasks

TEXT = "9:1 0 9:100 1 0\n9:1 0 9:101 1 0\n\n9:2 0 9:7 1\n9:3 0 9:8 0 0\n"


def test_parse_qrels_five_and_four_columns():
    assert parse_qrels(TEXT) == {"9:1": {"9:100", "9:101"}, "9:2": {"9:7"}}
    assert parse_qrels_with_tasks(TEXT) == {"9:1": {"9:100": 0, "9:101": 0}, "9:2": {"9:7": None}}


def test_bad_line_names_line_number():
    with pytest.raises(ValueError, match="line 2"):
        parse_qrels("9:1 0 9:100 1 0\n9:1 9:100\n")
