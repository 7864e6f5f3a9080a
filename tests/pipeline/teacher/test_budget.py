import threading

import pytest

from pipeline.teacher.budget import Budget
from pipeline.teacher.cost import PriceTable

PRICES = PriceTable({"m": (1.0, 2.0)})  # USD per 1M prompt / completion tokens


def test_request_limit_counts_reservations_and_actual_calls():
    b = Budget(max_requests=3, max_cost_usd=None, prices=PRICES, model="m")
    assert b.try_reserve(10, 10) and b.try_reserve(10, 10)
    b.settle((10, 10), 8, 5, calls=2)  # one re-ask: two calls booked
    assert b.spent()["requests"] == 2 and b.spent()["reserved_requests"] == 1
    assert not b.try_reserve(10, 10)  # 2 spent + 1 held = 3
    b.release((10, 10))
    assert b.try_reserve(10, 10)
    assert b.spent()["refused"] == 1


def test_cost_limit_reserves_estimates_and_settles_actuals():
    b = Budget(max_requests=None, max_cost_usd=0.01, prices=PRICES, model="m")
    est = (1000, 1000)  # 0.001 + 0.002 = $0.003 each
    assert [b.try_reserve(*est) for _ in range(4)] == [True, True, True, False]
    assert b.spent()["reserved_cost_usd"] == pytest.approx(0.009)
    b.settle(est, 1000, 0, calls=1)  # the answer was shorter than its max_tokens: $0.001
    s = b.spent()
    assert s["cost_usd"] == pytest.approx(0.001) and s["reserved_cost_usd"] == pytest.approx(0.006)
    assert s["prompt_tokens"] == 1000 and s["completion_tokens"] == 0
    assert b.try_reserve(*est)  # 0.001 + 0.006 + 0.003 = 0.010: exactly at the cap
    assert not b.try_reserve(1, 0)


def test_discount_and_unlimited():
    b = Budget(max_requests=None, max_cost_usd=0.003, prices=PRICES, model="m", discount=0.5)
    assert [b.try_reserve(1000, 1000) for _ in range(3)] == [True, True, False]  # $0.0015 each at half price
    free = Budget(max_requests=None, max_cost_usd=None, prices=PRICES, model="unknown-model")
    assert all(free.try_reserve(10**6, 10**6) for _ in range(100))


def test_rejects_negative_limits():
    with pytest.raises(ValueError):
        Budget(max_requests=-1, max_cost_usd=None, prices=PRICES, model="m")
    with pytest.raises(ValueError):
        Budget(max_requests=None, max_cost_usd=-0.5, prices=PRICES, model="m")


def test_concurrent_reservations_never_overshoot():
    b = Budget(max_requests=5000, max_cost_usd=None, prices=PRICES, model="m")
    granted = [0] * 8
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        for _ in range(1000):
            if b.try_reserve(100, 50):
                granted[i] += 1
                b.settle((100, 50), 90, 40, calls=1)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = b.spent()
    assert sum(granted) == 5000 and s["requests"] == 5000 and s["refused"] == 3000
    assert s["reserved_requests"] == 0 and s["reserved_cost_usd"] == 0
    assert s["cost_usd"] == pytest.approx(5000 * (90 + 80) / 1e6)
