"""Publish a TRACE checkpoint to the Hugging Face Hub as a model repo, in ONE commit (or one pull request).

    HF_TOKEN=... python -m trainer.release --checkpoint out/trace --repo user/trace-2b [--results R] [--bench B]

Uploads the weights (LoRA adapter/ or full model files), trace_config.json, train_config.json, tokenizer,
image processor, the evaluation and bench results when found, the sentence-transformers files (so the repo loads
with SentenceTransformer(repo, trust_remote_code=True); trainer/integrations/st.py) and a model card (README.md,
trainer/release/card.py).
Resumable like the dataset upload (common/hub.py): blobs first, one commit at the end; a rerun sends only the
blobs the Hub lacks. HF_TOKEN comes from the environment and is never printed or written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from common.cli import CliParser, run_cli
from common.hub import (
    REPO_ID,
    PublishError,
    PublishResult,
    check_repo_id,
    commit_once,
    hub_api,
    upload_errors,
    verify_files,
)
from trainer.integrations.st import MODULE_CONFIG, st_files
from trainer.modeling.checkpoint import ADAPTER_DIR, TRACE_CONFIG, read_config
from trainer.release.card import CardInputs, render_card
from trainer.training.config_file import read_train_config

REPO_TYPE = "model"
# Training-only files: never part of a release.
SKIP_FILES = {"README.md", "training_state.pt", "train_log.jsonl"}
RESULT_FILES = {"results.json": ("results.json", "eval/results.json"), "bench.json": ("bench.json",)}
WEIGHT_PREFIXES = ("model", "pytorch_model", f"{ADAPTER_DIR}/")  # stale weight files of an older version are deleted


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PublishError(f"{path}: cannot read {what} ({err})") from None


def resolve_base(trace_config: dict, ckpt: Path, override: str | None) -> tuple[str, Path | None]:
    """(base_model as it will be recorded, a base folder inside the checkpoint to upload with it, if any)."""
    base = override or trace_config["base_model"]
    if int(trace_config.get("lora_r", 0)) == 0 or base == ".":
        return ".", None
    inside = (ckpt / base).resolve()
    if not Path(base).is_absolute() and inside.is_dir() and inside.is_relative_to(ckpt.resolve()):
        return base, inside
    if Path(base).exists() or not REPO_ID.fullmatch(base):
        raise PublishError(f"base_model {base!r} is a local path outside {ckpt}: pass --base_model with the "
                           "Hub id it was trained from (e.g. Qwen/Qwen2-VL-2B-Instruct)")
    return base, None


def collect_files(ckpt: Path, base_dir: Path | None) -> dict[str, Path]:
    """{path in repo: local file} of the model itself; PublishError naming what a checkpoint lacks."""
    if not (ckpt / TRACE_CONFIG).is_file():
        raise PublishError(f"{ckpt} is not a TRACE checkpoint: it has no {TRACE_CONFIG} (give the folder "
                           "trainer.train wrote)")
    files = {p.name: p for p in sorted(ckpt.iterdir()) if p.is_file() and p.name not in SKIP_FILES}
    for folder in [ckpt / ADAPTER_DIR] + ([base_dir] if base_dir else []):
        if folder.is_dir():
            files.update({p.relative_to(ckpt).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()})
    cfg = _read_json(ckpt / TRACE_CONFIG, TRACE_CONFIG)
    weights = ([p for p in files if p.startswith(f"{ADAPTER_DIR}/adapter_model")] if int(cfg.get("lora_r", 0))
               else [p for p in files if p.endswith((".safetensors", ".bin")) and "/" not in p])
    needed = {"weights": weights, "tokenizer": [p for p in files if p.startswith("tokenizer")],
              "image processor (preprocessor_config.json)": [p for p in files if p == "preprocessor_config.json"]}
    missing = [what for what, found in needed.items() if not found]
    if missing:
        raise PublishError(f"{ckpt} has no {', '.join(missing)}: is the training finished?")
    return files


def find_result(ckpt: Path, name: str, given: str | None) -> dict | None:
    if given:
        return _read_json(Path(given), name)
    for rel in RESULT_FILES[name]:
        if (ckpt / rel).is_file():
            return _read_json(ckpt / rel, name)
    return None


def build_release(ckpt: str | Path, repo_id: str, *, results: str | None = None, bench: str | None = None,
                  dataset: str | None = None, base_model: str | None = None,
                  license: str = "other") -> dict[str, Path | bytes]:
    """{path in repo: local file or bytes}: the model files, the results, trace_config.json (base_model as
    published) and README.md (the card)."""
    ckpt = Path(ckpt)
    files: dict[str, Path | bytes] = {}
    trace_cfg = asdict(read_config(ckpt)) if (ckpt / TRACE_CONFIG).is_file() else None
    base, base_dir = resolve_base(trace_cfg, ckpt, base_model) if trace_cfg else (".", None)
    files.update(collect_files(ckpt, base_dir))
    trace_cfg = {**trace_cfg, "base_model": base}
    files[TRACE_CONFIG] = (json.dumps(trace_cfg, indent=2) + "\n").encode()
    module_cfg = _read_json(ckpt / MODULE_CONFIG, MODULE_CONFIG) if MODULE_CONFIG in files else {}
    # Current sentence-transformers files; a local export keeps its settings.
    files.update(st_files(module_cfg.get("mode", "direct"), module_cfg.get("max_new_tokens", 128)))
    train_cfg = read_train_config(ckpt / "train_config.json") if "train_config.json" in files else {}
    found = {name: find_result(ckpt, name, given) for name, given in (("results.json", results),
                                                                      ("bench.json", bench))}
    for name, value in found.items():
        if value is not None:
            files[name] = (json.dumps(value, indent=1) + "\n").encode()
    data = dataset or _hub_dataset(str(train_cfg.get("data", "")))
    hub_base = base if base != "." and base_dir is None else None
    if hub_base is None and REPO_ID.fullmatch(str(train_cfg.get("model", ""))) and not Path(
            train_cfg["model"]).exists():
        hub_base = train_cfg["model"]  # fully fine-tuned from a Hub model
    inputs = CardInputs(repo_id, trace_cfg, train_cfg, found["results.json"], found["bench.json"], data, hub_base,
                        license)
    files["README.md"] = render_card(inputs, sorted([*files, "README.md"])).encode()
    return dict(sorted(files.items()))


def _hub_dataset(data: str) -> str | None:
    """The Hub dataset id of a training data path ("hf://datasets/user/name/..." or "user/name"), else None."""
    if m := re.match(r"hf://datasets/([\w.-]+/[\w.-]+)", data):
        return m.group(1)
    return data if REPO_ID.fullmatch(data) and not Path(data).exists() else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest(), path.stat().st_size


def publish_model(ckpt: str | Path, repo_id: str, *, revision: str = "main", create_pr: bool = False,
                  private: bool = False, commit_message: str | None = None, endpoint: str | None = None,
                  **release) -> PublishResult:
    """Upload the release of `ckpt` to the model repo `repo_id` in one commit (or one PR) and verify it."""
    api = hub_api(endpoint)
    files = build_release(ckpt, repo_id, **release)
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    base_dir = [p.split("/")[0] + "/" for p in files if "/" in p and not p.startswith(f"{ADAPTER_DIR}/")]
    result = commit_once(api, repo_id, REPO_TYPE, {p: str(v) if isinstance(v, Path) else v for p, v in files.items()},
                         managed=(*WEIGHT_PREFIXES, *dict.fromkeys(base_dir)), revision=revision, create_pr=create_pr,
                         commit_message=commit_message or f"Upload TRACE checkpoint {Path(ckpt).name}: "
                                                          f"{len(files)} files",
                         commit_description=f"Published by trainer.release from {ckpt}.")
    expected = {p: (_sha256(v), len(v)) if isinstance(v, bytes) else _file_digest(v) for p, v in files.items()}
    verify_files(api, repo_id, result.commit_oid, REPO_TYPE, expected,
                 lambda p: files[p] if isinstance(files[p], bytes) else files[p].read_bytes())
    return result


PROG = "python -m trainer.release"


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, None if argv is None else list(argv), prog=PROG)


def _main(argv: list[str]) -> int:
    p = CliParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="folder written by trainer.train")
    p.add_argument("--repo", required=True, help="model repo id, e.g. user/trace-2b")
    p.add_argument("--results", default=None, help="trainer.evaluate results.json (default: CHECKPOINT/results.json "
                                                   "or CHECKPOINT/eval/results.json when present)")
    p.add_argument("--bench", default=None, help="trainer.bench --mix bench.json (default: CHECKPOINT/bench.json)")
    p.add_argument("--dataset", default=None, help="the M-BEIR-CoT dataset repo it was trained on, for the card")
    p.add_argument("--base_model", default=None, help="Hub id to record as base_model (LoRA checkpoints trained "
                                                      "from a local copy)")
    p.add_argument("--license", default="other", help="Hub license id of the weights (default: other)")
    p.add_argument("--revision", default="main")
    p.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--private", action="store_true", help="create the repo private if it does not exist")
    p.add_argument("--commit_message", default=None)
    p.add_argument("--dry_run", action="store_true", help="print the card and the file list; upload nothing")
    a = p.parse_args(argv)
    check_repo_id(a.repo, "model", "user/trace-2b")
    release = dict(results=a.results, bench=a.bench, dataset=a.dataset, base_model=a.base_model, license=a.license)
    if a.dry_run:
        files = build_release(a.checkpoint, a.repo, **release)
        print(files["README.md"].decode())
        print("\n".join(f"would upload {path}" for path in files))
        return 0
    with upload_errors(a.repo):
        result = publish_model(a.checkpoint, a.repo, revision=a.revision, create_pr=a.create_pr,
                               private=a.private, commit_message=a.commit_message, **release)
    where = f"pull request {result.pr_url}" if result.pr_url else f"commit {result.commit_url}"
    print(f"published {result.files} files ({result.deleted} stale deleted) to {a.repo} as {where}; "
          "checksums verified")
    return 0
