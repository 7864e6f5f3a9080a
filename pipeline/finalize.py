"""After the graph: stats.json, manifest.json and the dataset card from the graph's scratch outputs (_work/),
which are then dropped."""

from __future__ import annotations

import shlex
from collections import Counter

from apache_beam.io.filesystems import FileSystems

from pipeline import shards
from pipeline.card.card import write_card
from pipeline.outputs import WORK
from pipeline.plan import RunPlan
from pipeline.stats import to_stats
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.reference.state import OWNER as REFERENCE_OWNER


def finalize(opts, plan: RunPlan, argv: list[str], partitions: int = 1) -> dict:
    """stats.json, manifest.json and the card from the graph's scratch outputs; then drop the scratch."""
    out = plan.output_dir
    work = FileSystems.join(out, WORK)
    counter = Counter({(c, d, k): n for c, d, k, n in shards.read_json(FileSystems.join(work, "events.json"))})
    prices = plan.teacher.prices if plan.teacher else None
    cost = (lambda m, pt, ct: prices.cost(m, pt, ct)) if prices else None
    stats = to_stats(counter, dry_run=plan.dry_run, cost_fn=cost)
    shards.write_json(FileSystems.join(out, "stats.json"), stats)
    files = shards.read_json(FileSystems.join(work, "files.json"))
    if not plan.dry_run and not any(shards.relative_path(out, f["path"]).startswith("data/") for f in files):
        empty = FileSystems.join(out, shards.shard_name(0, 1))
        files.append(shards.write_shard([], empty, shards.row_arrow_schema(opts.embed_images)))
    shards.write_manifest(out, files, {"stats": "stats.json", "dry_run": plan.dry_run, "partitions": partitions})
    if not plan.dry_run:
        sample_path = FileSystems.join(work, "card_rows.json")
        examples = shards.read_json(sample_path) if FileSystems.exists(sample_path) else []
        examples = sorted(examples, key=lambda r: r["id"])
        write_card(out, stats, run_info(opts, plan, argv), examples)
    FileSystems.delete([work])
    return stats


def run_info(opts, plan: RunPlan, argv: list[str]) -> dict:
    """What the card says about the run: teacher, prompts, generation parameters, filters, command."""
    import prompts

    teacher = plan.teacher
    rules = plan.rules
    return {
        "teacher_model": teacher.model if teacher else "none (dry run)",
        "teacher_is_reference": bool(teacher and is_reference_teacher(teacher)),
        "prompts": {pid: prompts.load(pid).sha for pid in prompts.available()},
        "generation_params": {"temperature": opts.temperature, "max_tokens": opts.max_tokens,
                              "image_max_side": opts.image_max_side},
        "filters": {"reasoning_tokens": list(rules.reasoning_tokens), "answer_tokens": list(rules.answer_tokens),
                    "repetition_max_share": rules.repetition_max_share, "english_min_prob": rules.english_min_prob,
                    "tokenizer": rules.tokenizer_spec or "approximate offline counter",
                    "verifier": opts.verifier, "verifier_threshold": plan.verifier_threshold},
        "routing_mode": opts.routing,
        "pipeline_version": shards.package_version(),
        "command": "python -m pipeline " + shlex.join(argv),
        "embed_images": opts.embed_images,
    }


def is_reference_teacher(config: TeacherConfig) -> bool:
    """True when the server says it is the bundled offline stand-in (its /models list is owned by
    REFERENCE_OWNER), so the card can warn that the text is not from a model."""
    import openai

    try:
        client = openai.OpenAI(**config.client_args(), max_retries=0, timeout=5)
        return any(getattr(m, "owned_by", "") == REFERENCE_OWNER for m in client.models.list())
    except Exception:  # noqa: BLE001 - a server without /models is simply not the reference teacher
        return False
