"""`python -m trainer.evaluate mteb`: run mteb's own evaluation of a TRACE checkpoint and write its result files.

    python -m trainer.evaluate mteb --checkpoint CKPT --tasks CIRRIT2IRetrieval,MSCOCOT2IRetrieval --output_dir D
    python -m trainer.evaluate mteb --checkpoint CKPT --tasks cirr_task7 --mbeir_root ROOT --output_dir D

Tasks are mteb task names (MIEB's M-BEIR tasks, or any other: mteb downloads their data from the Hub), or, with
--mbeir_root, M-BEIR pairs built from the local tree (pair names such as cirr_task7, or MIEB's names for them; no
download). mteb writes D/results/<model>/<revision>/experiments/mode_<mode>/<task>.json (its own format: nDCG@10
as the main score, recall@k, hit rate, MAP, MRR ...) and skips tasks whose result files are already there (--rerun
reruns them); this command adds D/trace_mteb.json (routing shares, unreadable images, the read counts of local
tasks) and prints one line per task. D follows the output-folder contract (common/outdir.py): empty or this
command's, locked while written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import CliParser, non_negative_int, positive_int, run_cli, writable_folder
from common.errors import ConfigError
from common.outdir import claim_output_dir
from trainer.benchmark.evalset import DEFAULT_IMAGE_MAX_SIDE
from trainer.modeling.interface import MODES

PROG = "python -m trainer.evaluate mteb"
COMMAND = "trainer.evaluate mteb"
REPORT = "trace_mteb.json"
OUTPUTS = ("results/*", REPORT)
SHOWN_SCORES = ("ndcg_at_10", "recall_at_1", "recall_at_5", "recall_at_10")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated task names, e.g. CIRRIT2IRetrieval")
    return list(dict.fromkeys(names))


def build_parser() -> CliParser:
    p = CliParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="TRACE checkpoint folder or Hub model id")
    p.add_argument("--tasks", required=True, type=_names, help="comma-separated mteb task or M-BEIR pair names")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--mbeir_root", default=None, help="build M-BEIR pairs from this local tree instead of the Hub")
    p.add_argument("--mode", default="adaptive", choices=MODES)
    p.add_argument("--split", default="test", choices=("val", "test"), help="M-BEIR split of local tasks")
    p.add_argument("--seed", type=int, default=0, help="fixes each local query's instruction (as trainer.evaluate)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--batch_size", type=positive_int, default=32, help="items per mteb encode batch")
    p.add_argument("--query_batch", type=positive_int, default=8)
    p.add_argument("--cand_batch", type=positive_int, default=32)
    p.add_argument("--max_new_tokens", type=non_negative_int, default=128)
    p.add_argument("--image_max_side", type=positive_int, default=DEFAULT_IMAGE_MAX_SIDE)
    p.add_argument("--rerun", action="store_true", help="rerun tasks whose result files already exist")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --output_dir holding other files (they are never deleted or replaced)")
    return p


def build_tasks(names: Sequence[str], mbeir_root: str | None, split: str, seed: int) -> list:
    """Local M-BEIR tasks for the names --mbeir_root can build, mteb's registered tasks for the others."""
    import mteb

    from trainer.integrations.mteb_tasks import MIEB_TASKS, local_tasks, resolve_pairs

    pair_names = {p.name for p in resolve_pairs(list(MIEB_TASKS.values()), split)}
    local = [n for n in names if mbeir_root and (n in MIEB_TASKS or n in pair_names)]
    built = dict(zip(local, local_tasks(mbeir_root, local, split, seed), strict=True)) if local else {}
    tasks = []
    for name in names:
        if name in built:
            tasks.append(built[name])
            continue
        if name in pair_names:
            raise ConfigError(f"--tasks {name} is an M-BEIR pair: give --mbeir_root to build it from a local tree, "
                              f"or use MIEB's name for it")
        try:
            tasks.append(mteb.get_task(name))
        except KeyError:
            pairs = f", nor an M-BEIR pair ({', '.join(sorted(pair_names)[:3])}, ...)" if mbeir_root else ""
            raise ConfigError(f"--tasks {name} is not an mteb task (mteb.get_tasks() lists them){pairs}") from None
    return tasks


def check_checkpoint(checkpoint: str) -> None:
    """A local folder must be a TRACE checkpoint; anything else is taken as a Hub id (checked when loaded)."""
    if Path(checkpoint).expanduser().exists():
        from trainer.modeling.checkpoint import read_checkpoint

        read_checkpoint(checkpoint)


def _scores(result: Any) -> dict[str, dict]:
    """{task: {main_score, ndcg_at_10, recall_at_k ...}} from mteb's ModelResult."""
    out = {}
    for task_result in result.task_results:
        split = next(iter(task_result.scores))
        scores = task_result.scores[split][0]
        out[task_result.task_name] = {"main_score": scores["main_score"],
                                      **{k: scores[k] for k in SHOWN_SCORES if k in scores}}
    return out


def run(a: argparse.Namespace, tasks: list, embedder: Any = None) -> dict:
    """mteb's evaluation of `tasks` into a claimed --output_dir; the report it writes beside mteb's files."""
    import mteb

    from trainer.integrations.mteb_model import TraceMtebEncoder, display_name

    out = Path(a.output_dir)
    folder, revision = (a.checkpoint, None) if embedder is not None else resolve_checkpoint(a.checkpoint)
    try:
        encoder = TraceMtebEncoder(folder, revision, device=a.device, mode=a.mode, max_new_tokens=a.max_new_tokens,
                                   query_batch=a.query_batch, cand_batch=a.cand_batch,
                                   image_max_side=a.image_max_side, embedder=embedder,
                                   meta_name=display_name(a.checkpoint))
    except ValueError as e:  # neither a checkpoint folder nor a Hub model repo (trainer.inference.api)
        raise ConfigError(f"--checkpoint {a.checkpoint}: {e}") from None
    result = mteb.evaluate(encoder, tasks, cache=mteb.ResultCache(out),
                           overwrite_strategy="always" if a.rerun else "only-missing",
                           encode_kwargs={"batch_size": a.batch_size, "show_progress_bar": False},
                           show_progress_bar=False)
    report = {"model": encoder.mteb_model_meta.name, "revision": encoder.mteb_model_meta.revision, "mode": a.mode,
              "scores": _scores(result), "routing": encoder.routing_summary(),
              "unreadable_images": dict(encoder.image_failures),
              "local_reads": {t.metadata.name: t.read_stats.as_dict() for t in tasks if hasattr(t, "read_stats")}}
    (out / REPORT).write_text(json.dumps(report, indent=1))
    return report


def check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: use cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")


def resolve_checkpoint(checkpoint: str) -> tuple[str, str]:
    """(local folder, mteb revision): a folder and its content fingerprint, or a Hub id's downloaded snapshot and
    its commit hash; so a changed checkpoint is a new revision and mteb never reuses a stale result for it."""
    from trainer.benchmark.retrieval import dir_fingerprint

    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return str(path), dir_fingerprint(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(checkpoint))  # the snapshot folder is named by the commit hash
    except (HFValidationError, RepositoryNotFoundError) as e:
        raise ConfigError(f"--checkpoint {checkpoint} is neither a checkpoint folder nor a Hub model repo "
                          f"({type(e).__name__})") from None
    except OSError as e:  # offline and not cached, or the Hub not reachable
        raise ConfigError(f"--checkpoint {checkpoint}: cannot download it from the Hub ({type(e).__name__}); "
                          "give a local checkpoint folder") from None
    return str(folder), folder.name


def main(argv: Sequence[str] | None = None, embedder: Any = None) -> dict:
    """CLI entry; `embedder` lets tests pass a loaded model instead of loading --checkpoint."""
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        import mteb  # noqa: F401
    except ImportError:
        raise ConfigError("mteb is not installed: pip install '.[mteb]' (or mbeir-cot[mteb])") from None
    tasks = build_tasks(a.tasks, a.mbeir_root, a.split, a.seed)
    check_device(a.device)
    if embedder is None:
        check_checkpoint(a.checkpoint)
    writable_folder(a.output_dir)
    with claim_output_dir(a.output_dir, command=COMMAND, patterns=OUTPUTS, overwrite=a.overwrite):
        report = run(a, tasks, embedder)
    for task, scores in report["scores"].items():
        print(task + "  " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(f"mteb result files under {Path(a.output_dir) / 'results'}; {REPORT} beside them")
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
