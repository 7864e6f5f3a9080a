"""sentence-transformers: a TRACE checkpoint folder, or its Hub release, loads with
`SentenceTransformer(path_or_id, trust_remote_code=True)` (`pip install .[st]`).

    python -m trainer.integrations.st export CKPT        # add the three small files below to a local checkpoint

    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer("user/trace-2b", trust_remote_code=True)
    c = model.encode_document(["a red circle", Image.open("cat.jpg"), {"text": "a cat", "image": "cat.jpg"}])
    q = model.encode_query(["Find a picture of a red circle."], prompt_name="mscoco_task0")   # direct mode
    q = model.encode_query([{"text": "Make it blue.", "image": img}], prompt_name="cirr_task7", mode="adaptive")

encode_document gives TraceEmbedder.encode_candidates' embeddings; encode_query with an M-BEIR pair name as
prompt_name (it picks the task prompt; the text should carry the M-BEIR instruction, as for encode_queries) gives
encode_queries' in `mode` direct (the default, set in trace_sentence_transformers.json) or, per call, adaptive or
always. Inputs: text, images (PIL or a path), or {"text", "image"} dicts. A plain encode() is a query when it has
a prompt, else a document.

The files: modules.json (one module, st_module.TraceModule, saved in the checkpoint's root and imported from the
installed mbeir-cot package, hence trust_remote_code), config_sentence_transformers.json (one prompt per M-BEIR
pair whose text is the pair name, cosine similarity, and the requirements sentence-transformers checks before
loading) and trace_sentence_transformers.json (the module's settings). The weights stay TRACE's own files. This
module imports neither sentence-transformers nor torch: a release is built without them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.mbeir.layout import TEST_PAIRS, pair_name
from trainer.modeling.interface import MODES

MODULE_CONFIG = "trace_sentence_transformers.json"
PAIRS = tuple(pair_name(d, t) for d, t in TEST_PAIRS)
CLASS_REF = "trainer.integrations.st_module.TraceModule"  # dotted: sentence-transformers imports it from the package
REQUIREMENTS = {
    "sentence-transformers": ">=6.0",
    "mbeir-cot": {"specifier": ">=0.1", "reason": "TRACE's sentence-transformers module is "
                                                  "trainer.integrations.st_module in the mbeir-cot package: pip "
                                                  "install it from its repository with the [st] extra"},
}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")


def st_files(mode: str = "direct", max_new_tokens: int = 128) -> dict[str, bytes]:
    """{file name: content} that make a TRACE checkpoint folder a sentence-transformers model (the module's
    config written by hand: sentence-transformers need not be installed where a release is built)."""
    check_mode(mode)
    config = {"model_type": "SentenceTransformer", "prompts": {p: p for p in PAIRS}, "default_prompt_name": None,
              "similarity_fn_name": "cosine", "requirements": REQUIREMENTS}
    module = {"mode": mode, "max_new_tokens": max_new_tokens, "query_batch": 8, "cand_batch": 32}
    modules = [{"idx": 0, "name": "0", "path": "", "type": CLASS_REF}]
    return {name: (json.dumps(value, indent=2) + "\n").encode() for name, value in
            (("modules.json", modules), ("config_sentence_transformers.json", config), (MODULE_CONFIG, module))}


def export(checkpoint: str | Path, mode: str = "direct") -> list[Path]:
    """Write st_files() into a local checkpoint folder; returns the paths written."""
    from trainer.modeling.checkpoint import read_checkpoint

    read_checkpoint(checkpoint, flag="export")
    written = []
    for name, data in st_files(mode).items():
        path = Path(checkpoint) / name
        path.write_bytes(data)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli import CliParser

    p = CliParser(prog="python -m trainer.integrations.st", description="Make a TRACE checkpoint folder load "
                  "with SentenceTransformer(folder, trust_remote_code=True).")
    p.add_argument("command", choices=("export",))
    p.add_argument("checkpoint", help="checkpoint folder written by trainer.train")
    p.add_argument("--mode", default="direct", choices=MODES, help="the default encode_query mode")
    a = p.parse_args(argv)
    for path in export(a.checkpoint, a.mode):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from common.cli import run_cli

    sys.exit(run_cli(main, prog="python -m trainer.integrations.st"))
