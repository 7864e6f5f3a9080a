"""Teacher spend in USD from token usage and a per-model price table (USD per 1M tokens)."""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

# List prices (USD per 1M prompt / completion tokens, standard tier) as published by OpenAI in 2025-08.
# They may be outdated: pass your own table (--teacher_prices) for real budgeting.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}
BATCH_DISCOUNT = 0.5  # the OpenAI Batch API bills half the list price


class PriceTable:
    """Prices by model; a dated snapshot name ("gpt-4o-2024-08-06") matches its longest listed prefix."""

    def __init__(self, prices: dict[str, tuple[float, float]] | None = None):
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self._warned: set[str] = set()

    def __repr__(self) -> str:  # by value: the stages' shared client and budget are keyed by the config's repr
        return f"PriceTable({sorted(self.prices.items())!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PriceTable) and other.prices == self.prices

    __hash__ = None

    @classmethod
    def from_flag(cls, flag: str, *, with_defaults: bool = True) -> PriceTable:
        """Parse "model=in:out,model2=in:out" (USD per 1M tokens)."""
        prices = dict(DEFAULT_PRICES) if with_defaults else {}
        for item in filter(None, (s.strip() for s in flag.split(","))):
            try:
                model, rates = item.split("=", 1)
                p_in, p_out = rates.split(":", 1)
                prices[model.strip()] = (float(p_in), float(p_out))
            except ValueError as e:
                raise ValueError(f"bad price entry {item!r}: expected model=in:out (USD per 1M tokens)") from e
        return cls(prices)

    @classmethod
    def from_json(cls, path: str, *, with_defaults: bool = True) -> PriceTable:
        """Read {"model": [in, out], ...} or {"model": {"prompt": in, "completion": out}} from any Beam path."""
        from apache_beam.io.filesystems import FileSystems  # here: the teacher process does not import Beam

        with FileSystems.open(path) as f:
            raw = json.loads(f.read().decode("utf-8"))
        prices = dict(DEFAULT_PRICES) if with_defaults else {}
        for model, v in raw.items():
            prices[model] = (float(v["prompt"]), float(v["completion"])) if isinstance(v, dict) else (
                float(v[0]), float(v[1]))
        return cls(prices)

    def lookup(self, model: str) -> tuple[float, float] | None:
        if model in self.prices:
            return self.prices[model]
        prefixes = [m for m in self.prices if model.startswith(m + "-")]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, *, discount: float = 1.0) -> float:
        """USD for one call; unknown model -> 0.0 with one warning per model."""
        rates = self.lookup(model)
        if rates is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price for teacher model %r: its cost is counted as 0", model)
            return 0.0
        return (prompt_tokens * rates[0] + completion_tokens * rates[1]) / 1e6 * discount
