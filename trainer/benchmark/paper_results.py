"""Published numbers to print beside ours (shared PAPER.md §4; TRACE, arXiv 2603.02929 v2)."""

from __future__ import annotations

from pipeline.mbeir.layout import TEST_PAIRS, pair_name

# PAPER.md §4 column order (1 VN t→i … 16 InfoSeek (i,t)→(i,t)) is layout.TEST_PAIRS order.
PAIRS: tuple[str, ...] = tuple(pair_name(d, t) for d, t in TEST_PAIRS)

# PAPER.md §4 main table: M-BEIR local pools, Recall@5 (Recall@10 for Fashion200K and FashionIQ), percent.
_LOCAL_TABLE: dict[str, tuple[float, ...]] = {
    "UniIR CLIP_SF": (42.6, 81.1, 18.0, 84.7, 59.4, 78.7, 43.1, 92.3, 18.3, 32.0, 45.5, 27.9, 24.4, 44.6,
                      67.6, 48.9),
    "LamRA-Ret": (41.6, 81.5, 28.7, 86.0, 62.6, 81.2, 39.6, 90.6, 30.4, 32.1, 54.1, 52.1, 33.2, 53.1, 76.2,
                  63.3),
    "TRACE": (42.1, 82.3, 30.5, 87.8, 64.1, 82.5, 41.2, 91.3, 33.2, 33.6, 57.4, 55.8, 36.4, 57.3, 78.5, 67.1),
}
LOCAL: dict[str, dict[str, float]] = {m: dict(zip(PAIRS, v, strict=True)) for m, v in _LOCAL_TABLE.items()}
# The averages as printed in the paper (PAPER.md §4 "avg" column).
LOCAL_AVERAGE: dict[str, float] = {"UniIR CLIP_SF": 50.6, "LamRA-Ret": 56.6, "TRACE": 58.8}

# PAPER.md §4 throughput table (one H20, online query encoding): mode -> dataset -> (queries/s, Recall@5 %).
# Keyed by dataset: the paper does not say which MSCOCO task (its R@5 matches neither main-table column).
THROUGHPUT: dict[str, dict[str, tuple[float, float]]] = {
    "direct": {"mscoco": (15.68, 87.40), "cirr": (12.15, 53.06)},
    "always": {"mscoco": (4.45, 63.90), "cirr": (3.42, 54.73)},
    "adaptive": {"mscoco": (8.25, 89.10), "cirr": (6.48, 57.03)},
}
# PAPER.md §4 routing: MSCOCO bypasses reasoning 96 % of the time, CIRR reasons 62 % of the time.
SHARE_REASONED: dict[str, float] = {"mscoco": 0.04, "cirr": 0.62}
