"""Run accounting: every query line read has exactly one fate, and stats.json adds them up.

Stages emit small `Event` tuples; a Beam combiner merges them into a Counter; `to_stats` turns the Counter into
the stats.json shape (DESIGN.md; foundation issue item 7) and `check_identity` proves nothing was lost.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple


class Event(NamedTuple):
    category: str  # see CATEGORIES
    dataset: str = ""
    code: str = ""  # reason / error code, route, or model name for teacher usage
    n: int = 1


CATEGORIES = (
    "input",  # a query line read (in selection)
    "routed",  # code = direct | reasoning
    "accepted",  # code = direct | reasoning
    "rejected",  # code = reason
    "failed",  # code = error
    "pending",  # code = why (budget | batch): not answered yet; a rerun continues
    "rule_hit",  # code = every rule a rejected CoT failed (a row can fail several)
    "pool_line",  # a candidate pool line read
    "pool_rejected",  # code = reason
    "teacher_requests", "teacher_journal_hits", "teacher_retries",  # code = model
    "teacher_prompt_tokens", "teacher_completion_tokens",  # code = model
    "plan_requests", "plan_prompt_tokens", "plan_completion_tokens",  # code = model (dry run)
    "plan_rejected",  # code = reason a full run would reject the request with, unsent (dry run; e.g. prompt_too_long)
)


def merge(events) -> Counter:
    counter: Counter = Counter()
    for e in events:
        counter[(e.category, e.dataset, e.code)] += e.n
    return counter


def _by(counter: Counter, category: str, key: int) -> dict[str, int]:
    out: Counter = Counter()
    for (cat, dataset, code), n in counter.items():
        if cat == category:
            out[(dataset, code)[key]] += n
    return dict(sorted(out.items()))


def _total(counter: Counter, category: str) -> int:
    return sum(n for (cat, _, _), n in counter.items() if cat == category)


def to_stats(counter: Counter, *, dry_run: bool, cost_fn=None) -> dict:
    """The stats.json object. `cost_fn(model, prompt_tokens, completion_tokens) -> usd`."""
    cost_fn = cost_fn or (lambda model, pt, ct: 0.0)
    routes = ("direct", "reasoning")
    routed = _by(counter, "routed", 1)
    accepted = _by(counter, "accepted", 1)
    datasets = sorted({ds for (cat, ds, _) in counter if cat == "input" and ds})
    per_dataset = {}
    for ds in datasets:
        row = {"input": 0, "accepted": 0, "rejected": 0, "failed": 0, "pending": 0}
        routes_of = {r: 0 for r in routes}
        for (cat, d, code), n in counter.items():
            if d == ds and cat in row:
                row[cat] += n
            elif d == ds and cat == "routed":
                routes_of[code] += n
        per_dataset[ds] = {**row, "routed": routes_of}
    models = sorted({code for (cat, _, code) in counter if cat.startswith(("teacher_", "plan_"))})

    def usage(prefix: str, field: str) -> int:
        return _total(counter, f"{prefix}_{field}")

    cost = sum(cost_fn(m, counter[("teacher_prompt_tokens", "", m)], counter[("teacher_completion_tokens", "", m)])
               for m in models)
    stats = {
        "input": _total(counter, "input"),
        "routed": {r: routed.get(r, 0) for r in routes},
        "accepted": {r: accepted.get(r, 0) for r in routes},
        "rejected": _by(counter, "rejected", 1),
        "failed": _by(counter, "failed", 1),
        "pending": _by(counter, "pending", 1),
        "per_dataset": per_dataset,
        "teacher": {
            "requests": usage("teacher", "requests"),
            "journal_hits": usage("teacher", "journal_hits"),
            "retries": usage("teacher", "retries"),
            "prompt_tokens": usage("teacher", "prompt_tokens"),
            "completion_tokens": usage("teacher", "completion_tokens"),
            "cost_usd": round(cost, 6),
        },
        "rule_hits": _by(counter, "rule_hit", 1),
        "pool": {"lines": _total(counter, "pool_line"), "rejected": _by(counter, "pool_rejected", 1)},
    }
    if dry_run:
        est_cost = sum(cost_fn(m, counter[("plan_prompt_tokens", "", m)], counter[("plan_completion_tokens", "", m)])
                       for m in models)
        stats["plan"] = {
            "teacher_requests": usage("plan", "requests"),
            "est_prompt_tokens": usage("plan", "prompt_tokens"),
            "est_completion_tokens": usage("plan", "completion_tokens"),
            "est_cost_usd": round(est_cost, 6),
            "rejected_unsent": _by(counter, "plan_rejected", 1),  # e.g. prompt_too_long: never sent
        }
    return stats


def check_identity(stats: dict, *, dry_run: bool) -> str | None:
    """None when every input line is accounted for, else a message naming the gap."""
    rejected = sum(stats["rejected"].values())
    if dry_run:
        total = stats["routed"]["direct"] + stats["routed"]["reasoning"] + rejected
        parts = "routed.direct + routed.reasoning + rejected"
    else:
        total = (sum(stats["accepted"].values()) + rejected + sum(stats["failed"].values())
                 + sum(stats.get("pending", {}).values()))
        parts = "accepted + rejected + failed + pending"
    if total != stats["input"]:
        return f"counts do not add up: input {stats['input']} != {parts} {total}"
    return None


def summary(stats: dict, *, dry_run: bool) -> str:
    """A short human summary of stats.json."""
    lines = [f"input query lines: {stats['input']}"]
    lines.append(f"routed: direct {stats['routed']['direct']}, reasoning {stats['routed']['reasoning']}")
    if not dry_run:
        lines.append(f"accepted: direct {stats['accepted']['direct']}, reasoning {stats['accepted']['reasoning']}")
    rej = stats["rejected"]
    lines.append(f"rejected: {sum(rej.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in rej.items())})" if rej else ""))
    if not dry_run:
        fail = stats["failed"]
        lines.append(f"failed: {sum(fail.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in fail.items())})" if fail else ""))
        pending = sum(stats.get("pending", {}).values())
        if pending:
            lines.append(f"pending: {pending} ({', '.join(f'{k} {v}' for k, v in stats['pending'].items())}): "
                         "not answered yet; rerun the same command to continue")
        t = stats["teacher"]
        lines.append(f"teacher: {t['requests']} requests, {t['journal_hits']} journal hits, {t['retries']} retries, "
                     f"{t['prompt_tokens']}+{t['completion_tokens']} tokens, ${t['cost_usd']:.4f}")
    else:
        p = stats["plan"]
        lines.append(f"plan (dry run, no calls made): {p['teacher_requests']} teacher requests, about "
                     f"{p['est_prompt_tokens']}+{p['est_completion_tokens']} tokens, about ${p['est_cost_usd']:.2f}")
        unsent = p.get("rejected_unsent") or {}
        if unsent:
            lines.append("plan: a full run rejects these requests before sending them: "
                         + ", ".join(f"{k} {v}" for k, v in unsent.items()))
    problem = check_identity(stats, dry_run=dry_run)
    lines.append(problem or "identity holds: every input line is accounted for")
    return "\n".join(lines)
