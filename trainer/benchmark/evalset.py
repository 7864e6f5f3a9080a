"""Read what evaluation needs from an M-BEIR root: the test pairs' queries (as QueryInput), pools and qrels.

Parsing is the pipeline's Beam-free M-BEIR code (pipeline/mbeir/); this module only decides how evaluation uses
it: fixed-seed instructions, query text built as UniIR does, and missing images counted instead of raised.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import ConfigError
from pipeline.mbeir import image_gate, images, layout, reasons
from pipeline.mbeir.instructions import Instructions, query_text
from pipeline.mbeir.lines import iter_lines
from pipeline.mbeir.parse import parse_candidate_line, parse_query_line
from pipeline.mbeir.records import CandidateRecord, QueryRecord, Reject
from trainer.benchmark.scoring import Qrels, headline_k, read_qrels
from trainer.modeling.interface import CandidateInput, QueryInput

DEFAULT_IMAGE_MAX_SIDE = 512  # bounds memory per batch; M-BEIR images have short side 256 (MBEIR.md)


@dataclass(frozen=True)
class EvalPair:
    """One (dataset, task) evaluation pair and its files, relative to the M-BEIR root."""

    dataset: str
    task_id: int
    split: str = "test"

    @property
    def name(self) -> str:
        return layout.pair_name(self.dataset, self.task_id)

    @property
    def query_file(self) -> str:
        return layout.query_file(self.split, self.dataset, self.task_id)

    @property
    def pool_file(self) -> str:
        return layout.local_pool_file(self.dataset, self.task_id)

    @property
    def qrels_file(self) -> str:
        return layout.qrels_file(self.split, self.dataset, self.task_id)

    @property
    def headline_k(self) -> int:
        return headline_k(self.name)


def eval_pairs(names: Sequence[str] | None = None, split: str = "test") -> list[EvalPair]:
    """The 16 test pairs in paper order, or the named subset (names like "cirr_task7")."""
    pairs = [EvalPair(d, t, split) for d, t in layout.TEST_PAIRS]
    if not names:
        return pairs
    known = {p.name: p for p in pairs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--pairs: unknown pairs {unknown}; choose from {', '.join(sorted(known))}")
    return [known[n] for n in names]


def needs_images(pair: EvalPair) -> bool:
    return "image" in ",".join(layout.TASKS[pair.task_id])


def check_root(root: str | Path, pairs: Sequence[EvalPair], pools: Sequence[str] = ("local",)) -> None:
    """ConfigError unless the M-BEIR root holds what evaluating these pairs reads: the split's query and qrels
    files, the pools ("local": each pair's, "global": the union pool), the instructions and, when a pair has images,
    the mbeir_images/ folder. A few missing images inside it are counted per pair, never fatal."""
    if re.match(r"[a-z][a-z0-9+.-]*:/", str(root)):  # a URL (a Path has folded its "//" into "/")
        url = re.sub(r"^([a-z][a-z0-9+.-]*):/+", r"\1://", str(root))
        raise ConfigError(f"--mbeir_root {url}: evaluation reads a local M-BEIR folder (with its images); "
                          "download it first (the pipeline's hf:// download keeps it under --hf_cache_dir)")
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--mbeir_root {root} is not a folder: give the M-BEIR root holding query/, cand_pool/, "
                          "qrels/, instructions/ and mbeir_images/")
    split = pairs[0].split if pairs else "test"
    wanted = [layout.INSTRUCTIONS] + [f for p in pairs for f in (p.query_file, p.qrels_file)]
    wanted += [p.pool_file for p in pairs] if "local" in pools else []
    if "global" in pools:
        wanted.append(layout.union_pool_file(split))
    missing = [f for f in dict.fromkeys(wanted) if not (root / f).is_file()]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ConfigError(f"--mbeir_root {root} lacks {len(missing)} file(s) of the {split} split: {shown}; "
                          "download them, or choose other --pairs")
    if any(needs_images(p) for p in pairs) and not (root / layout.IMAGE_DIR).is_dir():
        raise ConfigError(f"--mbeir_root {root} has no {layout.IMAGE_DIR}/ folder, and the selected pairs have "
                          f"images: unpack the M-BEIR image archive there ({layout.IMAGE_ARCHIVE_PATTERN})")


@dataclass
class ReadStats:
    """What reading a file found besides good records."""

    rejected: Counter = field(default_factory=Counter)  # reason code -> lines
    missing_images: int = 0
    empty_inputs: int = 0  # candidates with neither text nor a readable image

    def as_dict(self) -> dict:
        return {"rejected": dict(self.rejected), "missing_images": self.missing_images,
                "empty_inputs": self.empty_inputs}

    def add(self, counts: dict) -> ReadStats:
        """Add another reading's as_dict() (from a chunk record or a worker process)."""
        self.rejected.update(counts.get("rejected", {}))
        self.missing_images += counts.get("missing_images", 0)
        self.empty_inputs += counts.get("empty_inputs", 0)
        return self


def read_queries(root: str | Path, pair: EvalPair, stats: ReadStats) -> list[QueryRecord]:
    """All parseable queries of a pair; rejects are counted (one still listed in qrels scores as a miss)."""
    out = []
    with open(Path(root) / pair.query_file, "rb") as f:
        for n, raw, complete in iter_lines(f):
            if not raw.strip():
                continue
            rec = parse_query_line(raw, source_file=pair.query_file, line_number=n, dataset=pair.dataset,
                                   complete=complete)
            if isinstance(rec, Reject):
                stats.rejected[rec.reason] += 1
            else:
                out.append(rec)
    return out


def read_pair_qrels(root: str | Path, pair: EvalPair) -> Qrels:
    return read_qrels([Path(root) / pair.qrels_file])


def read_instructions(root: str | Path) -> Instructions:
    return Instructions.parse((Path(root) / layout.INSTRUCTIONS).read_text(encoding="utf-8"))


def _image(root: Path, rel: str | None, max_side: int, stats: ReadStats) -> Image.Image | None:
    """The image as RGB, longer side <= max_side, through the image gate; None when missing (missing_images)
    or refused (rejected, by the gate's reason code).

    Local files only: the trainer runs where Beam's FileSystems is absent. A path whose real path leaves the
    root is never opened (counted as unsafe_image_path).
    """
    if not rel:
        return None
    path = images.local_image_path(str(root), rel)
    if path is None:
        stats.rejected[reasons.UNSAFE_IMAGE_PATH] += 1
        return None
    try:
        img = image_gate.load_rgb(path, where=rel)
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return img
    except image_gate.ImageRejected as e:  # missing as before; a hostile file by the gate's reason code
        if e.reason == reasons.MISSING_IMAGE:
            stats.missing_images += 1
        else:
            stats.rejected[e.reason] += 1
        return None


def query_inputs(root: str | Path, records: Sequence[QueryRecord], instructions: Instructions, seed: int,
                 stats: ReadStats, max_side: int = DEFAULT_IMAGE_MAX_SIDE) -> list[QueryInput]:
    """QueryInputs with a fixed-seed UniIR instruction; the candidate modality is the task's (MBEIR.md)."""
    root = Path(root)
    out = []
    for r in records:
        cand_modality = layout.TASKS[r.task_id][1]
        prompt = instructions.choose(r.dataset_id, r.query_modality, cand_modality, r.qid, seed)
        out.append(QueryInput(text=query_text(prompt, r.query_txt), image=_image(root, r.query_img_path,
                                                                                max_side, stats),
                              dataset=r.dataset, task_id=r.task_id))
    return out


def iter_candidates(root: str | Path, pool_file: str, stats: ReadStats, offset: int = 0, first_line: int = 1,
                    max_lines: int | None = None) -> Iterator[CandidateRecord]:
    """Stream a pool's candidates (constant memory); bad lines are counted, never raised. With `offset` (the byte
    where line `first_line` starts, from line_offsets) and `max_lines`: only those lines (one chunk)."""
    with open(Path(root) / pool_file, "rb") as f:
        f.seek(offset)
        for n, raw, complete in iter_lines(f):
            if max_lines is not None and n > max_lines:
                return
            if not raw.strip():
                continue
            rec = parse_candidate_line(raw, source_file=pool_file, line_number=first_line + n - 1,
                                       complete=complete)
            if isinstance(rec, Reject):
                stats.rejected[rec.reason] += 1
            else:
                yield rec


def candidate_input(root: str | Path, rec: CandidateRecord, stats: ReadStats,
                    max_side: int = DEFAULT_IMAGE_MAX_SIDE) -> CandidateInput | None:
    """A CandidateInput; None when nothing is left to embed (image-only candidate whose image is missing)."""
    image = _image(Path(root), rec.img_path, max_side, stats)
    text = rec.txt if rec.txt and rec.txt.strip() else None
    if image is None and text is None:
        stats.empty_inputs += 1
        return None
    return CandidateInput(text=text, image=image, modality=rec.modality)


def count_lines(path: str | Path) -> int:
    """Upper bound on a JSONL file's records (newlines, plus a last line without one)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def line_offsets(path: str | Path, every: int) -> tuple[list[int], int]:
    """(byte offsets where lines 1, every + 1, 2 * every + 1, ... start; the number of lines), lines counted as
    count_lines and iter_lines count them. One pass over the file, constant memory."""
    offsets, newlines, pos, last = [0], 0, 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            following = newlines + 1 + np.arange(len(ends))  # 0-based number of the line after each newline
            offsets += (pos + ends[following % every == 0] + 1).tolist()
            newlines, pos, last = newlines + len(ends), pos + len(block), block[-1:]
    return [o for o in offsets if o < pos], newlines + (last != b"\n")
