import json
import logging

import pytest

from pipeline.teacher.cost import BATCH_DISCOUNT, DEFAULT_PRICES, PriceTable


def test_cost_per_million_tokens_and_discount():
    table = PriceTable({"m": (2.0, 8.0)})
    assert table.cost("m", 1_000_000, 0) == pytest.approx(2.0)
    assert table.cost("m", 250_000, 500_000) == pytest.approx(0.5 + 4.0)
    assert table.cost("m", 1_000_000, 1_000_000, discount=BATCH_DISCOUNT) == pytest.approx(5.0)


def test_snapshot_names_use_the_longest_listed_prefix():
    table = PriceTable()
    assert table.lookup("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert table.lookup("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.lookup("gpt-4ox") is None


def test_unknown_model_costs_zero_with_one_warning(caplog):
    table = PriceTable({})
    with caplog.at_level(logging.WARNING):
        assert table.cost("qwen-vl", 10, 10) == 0.0
        assert table.cost("qwen-vl", 10, 10) == 0.0
    assert sum("qwen-vl" in r.getMessage() for r in caplog.records) == 1


def test_flag_and_json_tables(tmp_path):
    table = PriceTable.from_flag("qwen-vl=0.2:0.6, gpt-4o=1:2")
    assert table.lookup("qwen-vl") == (0.2, 0.6) and table.lookup("gpt-4o") == (1.0, 2.0)
    assert table.lookup("gpt-4.1") == DEFAULT_PRICES["gpt-4.1"]
    with pytest.raises(ValueError, match="model=in:out"):
        PriceTable.from_flag("qwen-vl=0.2")
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"a": [1, 3], "b": {"prompt": 0.5, "completion": 1.5}}))
    table = PriceTable.from_json(str(path), with_defaults=False)
    assert table.prices == {"a": (1.0, 3.0), "b": (0.5, 1.5)}
