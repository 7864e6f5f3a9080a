"""Spend cap for the teacher: a request is sent only after it reserves its estimated cost.

    budget = Budget(max_requests=10_000, max_cost_usd=50.0, prices=PriceTable(), model="gpt-4o")
    if budget.try_reserve(req.est_prompt_tokens, max_tokens):   # else: report the item as pending
        result = ...                                             # call the teacher
        budget.settle((req.est_prompt_tokens, max_tokens), result.prompt_tokens, result.completion_tokens,
                      result.attempts)

Estimates are upper bounds (the completion estimate is the request's max_tokens), so in-flight requests never
push the spend past the cap; `settle` replaces the estimate with what the call really used. Requests count
HTTP calls: a reservation holds one, `settle` books `calls` (retries and re-asks included).

Each process enforces its own copy: with several worker processes (Beam multi_processing, Dataflow workers),
set the limits to the total divided by the number of worker processes.
"""

from __future__ import annotations

import threading
from typing import Any

from pipeline.teacher.cost import PriceTable


class Budget:
    """Thread-safe request and USD limits (None = unlimited)."""

    def __init__(self, max_requests: int | None, max_cost_usd: float | None, prices: PriceTable, model: str,
                 *, discount: float = 1.0):
        if max_requests is not None and max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {max_requests}")
        if max_cost_usd is not None and max_cost_usd < 0:
            raise ValueError(f"max_cost_usd must be >= 0, got {max_cost_usd}")
        self.max_requests, self.max_cost_usd = max_requests, max_cost_usd
        self.prices, self.model, self.discount = prices, model, discount
        self._lock = threading.Lock()
        self._requests = self._reserved_requests = self._refused = 0
        self._cost = self._reserved_cost = 0.0
        self._prompt_tokens = self._completion_tokens = 0

    def _usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.prices.cost(self.model, prompt_tokens, completion_tokens, discount=self.discount)

    def try_reserve(self, est_prompt_tokens: int, est_completion_tokens: int) -> bool:
        """Hold one request and its estimated cost; False (nothing held) once either limit would be passed."""
        usd = self._usd(est_prompt_tokens, est_completion_tokens)
        with self._lock:
            over_n = (self.max_requests is not None
                      and self._requests + self._reserved_requests + 1 > self.max_requests)
            over_usd = (self.max_cost_usd is not None
                        and self._cost + self._reserved_cost + usd > self.max_cost_usd + 1e-12)
            if over_n or over_usd:
                self._refused += 1
                return False
            self._reserved_requests += 1
            self._reserved_cost += usd
            return True

    def settle(self, reserved_estimate: tuple[int, int], actual_prompt_tokens: int,
               actual_completion_tokens: int, calls: int) -> None:
        """Release a reservation made with `reserved_estimate` = (est_prompt, est_completion) and book the
        actual usage (calls=0 and zero tokens: the request was never sent)."""
        usd = self._usd(*reserved_estimate)
        actual = self._usd(actual_prompt_tokens, actual_completion_tokens)
        with self._lock:
            self._reserved_requests = max(0, self._reserved_requests - 1)
            self._reserved_cost = max(0.0, self._reserved_cost - usd)
            self._requests += calls
            self._cost += actual
            self._prompt_tokens += actual_prompt_tokens
            self._completion_tokens += actual_completion_tokens

    def release(self, reserved_estimate: tuple[int, int]) -> None:
        """Give a reservation back unused."""
        self.settle(reserved_estimate, 0, 0, 0)

    def spent(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self._requests, "cost_usd": round(self._cost, 6),
                    "prompt_tokens": self._prompt_tokens, "completion_tokens": self._completion_tokens,
                    "reserved_requests": self._reserved_requests,
                    "reserved_cost_usd": round(self._reserved_cost, 6), "refused": self._refused,
                    "max_requests": self.max_requests, "max_cost_usd": self.max_cost_usd}
