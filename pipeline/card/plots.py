"""PNG plots for the dataset card (matplotlib, Agg backend). Each function returns PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FATES = ("accepted", "rejected", "failed")
FATE_COLOURS = {"accepted": "#4c9a2a", "rejected": "#d98c1f", "failed": "#b22222"}
ROUTE_COLOURS = {"direct": "#7f7f7f", "reasoning": "#1f77b4"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No Software/date metadata: the same stats give the same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def length_histograms(lengths: Mapping[str, Sequence[int]], unit: str = "words") -> bytes:
    """One histogram per field (e.g. reasoning, answer) of accepted reasoning rows."""
    names = [k for k, v in lengths.items() if len(v)] or list(lengths) or ["reasoning"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = list(lengths.get(name, []))
        if values:
            ax.hist(values, bins=min(40, max(5, len(set(values)))), color="#1f77b4")
            ax.axvline(sorted(values)[len(values) // 2], color="black", linestyle="--", linewidth=1,
                       label=f"median {sorted(values)[len(values) // 2]}")
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{name} length ({len(values)} rows)")
        ax.set_xlabel(unit)
        ax.set_ylabel("rows")
    fig.tight_layout()
    return _png(fig)


def _stacked_shares(per_dataset: Mapping[str, Mapping[str, float]], keys: Sequence[str],
                    colours: Mapping[str, str], title: str) -> bytes:
    names = sorted(per_dataset)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 3.8))
    left = [0.0] * len(names)
    for key in keys:
        shares = []
        for name in names:
            total = sum(float(per_dataset[name].get(k, 0)) for k in keys)
            shares.append(float(per_dataset[name].get(key, 0)) / total if total else 0.0)
        ax.bar(names, shares, bottom=left, label=key, color=colours.get(key))
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of queries")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    return _png(fig)


def fate_shares(per_dataset: Mapping[str, Mapping[str, float]]) -> bytes:
    """Per dataset: share of input queries accepted, rejected, failed."""
    return _stacked_shares(per_dataset, FATES, FATE_COLOURS, "Fate of each input query, per dataset")


def route_shares(per_dataset_routes: Mapping[str, Mapping[str, float]]) -> bytes:
    """Per dataset: share of accepted rows routed direct vs reasoning."""
    return _stacked_shares(per_dataset_routes, tuple(ROUTE_COLOURS), ROUTE_COLOURS,
                           "Route of accepted rows, per dataset")
