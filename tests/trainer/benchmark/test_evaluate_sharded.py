"""Paper-scale evaluation machinery on the embedded sample with the tiny model: two torchrun ranks, two shard jobs
plus a final run, a run killed after k chunks and rerun, and prefetch workers all give the run files of one
in-thread process, byte for byte, on local and union pools."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.mbeir import layout
from trainer.benchmark import evaluate
from trainer.benchmark.config import EvalConfig
from trainer.benchmark.evalset import eval_pairs, read_instructions
from trainer.benchmark.jobs import QueryJob
from trainer.benchmark.prefetch import PreparedQueries, QueryBatches

PAIRS = ("webqa_task1", "cirr_task7")  # text candidates, and image candidates with (image, text) queries
QUERIES, POOL_LINES = 4, 12
REPO = Path(__file__).resolve().parents[3]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def small_root(sample: Path, root: Path) -> Path:
    """The sample cut to PAIRS: their first QUERIES test queries, pools of their first POOL_LINES lines plus the
    positives, the union pool as those pools sorted by id, the instructions and the images."""
    union = {}
    for dataset, task in (p.rsplit("_task", 1) for p in PAIRS):
        files = {k: Path(f(*a)) for k, f, a in (("q", layout.query_file, ("test", dataset, int(task))),
                                                ("r", layout.qrels_file, ("test", dataset, int(task))),
                                                ("p", layout.local_pool_file, (dataset, int(task))))}
        queries = _lines(sample / files["q"])[:QUERIES]
        positives = {d for q in queries for d in json.loads(q)["pos_cand_list"]}
        pool = [c for n, c in enumerate(_lines(sample / files["p"])) if n < POOL_LINES
                or json.loads(c)["did"] in positives] + _unreadable(root, dataset)
        qids = {json.loads(q)["qid"] for q in queries}
        qrels = [r for r in _lines(sample / files["r"]) if r.split()[0] in qids]
        for rel, lines in ((files["q"], queries), (files["r"], qrels), (files["p"], pool)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("".join(lines), encoding="utf-8")
        union.update({json.loads(c)["did"]: c for c in pool})
        shutil.copytree(sample / f"mbeir_images/{dataset}_images", root / f"mbeir_images/{dataset}_images",
                        dirs_exist_ok=True)
    (root / layout.UNION_TEST_POOL).parent.mkdir(parents=True)
    (root / layout.UNION_TEST_POOL).write_text("".join(union[d] for d in sorted(union, key=layout.did_to_int)))
    (root / layout.INSTRUCTIONS).parent.mkdir(parents=True)
    shutil.copy(sample / layout.INSTRUCTIONS, root / layout.INSTRUCTIONS)
    return root


def _unreadable(root: Path, dataset: str) -> list[str]:
    """Image candidates whose image is missing or is not an image: counted, whichever process reads them."""
    if dataset != "cirr":
        return []
    (root / "mbeir_images/cirr_images").mkdir(parents=True, exist_ok=True)
    (root / "mbeir_images/cirr_images/garbage.jpg").write_bytes(b"not a JPEG at all")
    return [json.dumps({"did": f"8:{900_000 + i}", "txt": None, "img_path": f"mbeir_images/cirr_images/{name}",
                        "modality": "image", "src_content": None}) + "\n"
            for i, name in enumerate(("gone.jpg", "garbage.jpg"))]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every torchrun rank runs (OMP_NUM_THREADS=1): the same kernels, the same bits
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(sample_root, tiny_base, tmp_path_factory, one_thread):
    from trainer import TraceEmbedder

    root = small_root(Path(sample_root), tmp_path_factory.mktemp("small_mbeir"))
    ckpt = tmp_path_factory.mktemp("trace") / "ckpt"
    shutil.copytree(tiny_base, ckpt)
    (ckpt / "trace_config.json").write_text(json.dumps({"base_model": ".", "lora_r": 0}))
    return root, ckpt, TraceEmbedder.load(ckpt, device="cpu")


def argv(setup, out: Path, *extra: str) -> list[str]:
    root, ckpt, _ = setup
    return ["--mbeir_root", str(root), "--checkpoint", str(ckpt), "--output_dir", str(out), "--pairs", *PAIRS,
            "--pool", "both", "--encode_chunk", "3", "--max_new_tokens", "2", "--device", "cpu",
            "--progress", "false", "--num_workers", "0", *extra]


def run_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "runs").iterdir())}


def chunk_counts(results: dict) -> dict[str, tuple[int, int, int]]:
    """(total, reused, encoded) per pool and per pair's queries."""
    counts = {f"pool {name}": meta for name, meta in results["pools"].items()}
    counts.update({f"queries {name}": e["query_chunks"] for name, e in results["pairs"].items()})
    return {k: (c["chunks_total"], c["chunks_reused"], c["chunks_encoded"]) for k, c in counts.items()}


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """One process, data prepared in the model's thread."""
    out = tmp_path_factory.mktemp("one_process")
    results = evaluate.main(argv(setup, out), embedder=setup[2])
    files = run_files(out)
    assert len(files) == 2 * len(PAIRS) and all(files.values())
    assert all(reused == 0 and encoded == total > 1 for total, reused, encoded in chunk_counts(results).values())
    return files, results


def _subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_two_torchrun_ranks_equal_one_process(setup, reference, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "trainer.evaluate",
                           *argv(setup, tmp_path)], cwd=REPO, env=_subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_files(tmp_path) == reference[0]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["encoding"]["kind"] == "torchrun" and results["encoding"]["world_size"] == 2
    assert chunk_counts(results) == chunk_counts(reference[1])  # every chunk encoded once, by one rank
    assert proc.stdout.count("this run (local)") == 1  # rank 0 alone prints the table


def test_two_shard_jobs_then_a_final_run_equal_one_process(setup, reference, tmp_path, capsys):
    shards = [evaluate.main(argv(setup, tmp_path, "--num_shards", "2", "--shard_index", str(i)),
                            embedder=setup[2]) for i in range(2)]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results.json").exists()
    for label, (total, _, _) in chunk_counts(reference[1]).items():
        encoded = [s["jobs"][label]["chunks_encoded"] for s in shards]
        assert sum(encoded) == total and min(encoded) >= (total - 1) // 2  # the work was shared
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-0000-of-0002.json",
                                                                       "shard-0001-of-0002.json"]
    final = evaluate.main(argv(setup, tmp_path), embedder=setup[2])
    assert run_files(tmp_path) == reference[0]
    assert all(reused == total and encoded == 0 for total, reused, encoded in chunk_counts(final).values())
    assert "pool global: " in capsys.readouterr().out  # the one-line summary per pool


KILLER = """
import os, signal, socket, sys
from trainer.benchmark import chunks, evaluate

kill_at, written, write = int(sys.argv[1]), [0], chunks.ChunkFolder.write

def write_then_die(self, index, chunk):
    if written[0] == kill_at:  # half-way through the next chunk's file: SIGKILL, no clean-up of any kind
        tmp = self.folder / f".{self.path(index).name}.{socket.gethostname()}-{os.getpid()}.tmp"
        tmp.write_bytes(b"PK half a chunk")
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, index, chunk)
    written[0] += 1

chunks.ChunkFolder.write = write_then_die
evaluate.main(sys.argv[2:])
"""


def test_killed_mid_pool_rerun_encodes_only_the_missing_chunks(setup, reference, tmp_path):
    kill_at = 4  # the union pool, the first job, has more chunks than that: the kill is in the middle of it
    proc = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), *argv(setup, tmp_path)], cwd=REPO,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    cache = tmp_path / "embedding_cache"
    assert len(list(cache.rglob("*.chunk"))) == kill_at and len(list(cache.rglob(".*.tmp"))) == 1
    again = evaluate.main(argv(setup, tmp_path), embedder=setup[2])
    assert run_files(tmp_path) == reference[0]
    counts = chunk_counts(again)
    assert counts["pool global"][1:] == (kill_at, counts["pool global"][0] - kill_at)
    assert all(reused == 0 and encoded == total for name, (total, reused, encoded) in counts.items()
               if name != "pool global")
    assert not list(cache.rglob(".*.tmp"))  # the dead run's temporary file is gone, nothing else was deleted


def test_prefetch_workers_equal_the_model_thread(setup, reference, tmp_path):
    results = evaluate.main(argv(setup, tmp_path, "--num_workers", "1"), embedder=setup[2])
    assert run_files(tmp_path) == reference[0]
    assert results["encoding"]["num_workers"] == 1
    assert reference[1]["pools"]["cirr_task7"]["missing_images"] == 1
    assert reference[1]["pools"]["global"]["rejected"] == {"unreadable_image": 1}
    for name, pool in reference[1]["pools"].items():  # read counts came back from the worker process
        assert {k: results["pools"][name][k] for k in ("count", "rejected", "missing_images", "empty_inputs")} == \
            {k: pool[k] for k in ("count", "rejected", "missing_images", "empty_inputs")}
    assert {p: e["routing"] for p, e in results["pairs"].items()} == \
        {p: e["routing"] for p, e in reference[1]["pairs"].items()}


def test_worker_batches_are_the_engines_batches(setup):
    """CandidateBatches splits the engine's encode_candidates in two (collate where the data is read, forward on
    the model's thread): the same batches, the same embeddings, bit for bit."""
    from trainer.benchmark.evalset import ReadStats, candidate_input, iter_candidates
    from trainer.benchmark.prefetch import CandidateBatches

    root, _, embedder = setup
    stats = ReadStats()
    inputs = [c for rec in iter_candidates(root, layout.UNION_TEST_POOL, stats)
              if (c := candidate_input(root, rec, stats)) is not None]
    assert {c.image is None for c in inputs} == {True, False}  # text and image candidates, lengths differ
    batches = CandidateBatches(embedder, batch_size=5)
    out = torch.zeros(len(inputs), embedder.base.config.text_config.hidden_size)
    for rows, payload in batches.prepare(inputs):
        out[rows] = batches.embed(payload)
    assert torch.equal(out, embedder.encode_candidates(inputs, batch_size=5))


def encode_queries_of(job: QueryJob, cfg: EvalConfig):
    """What encode_pair_queries does, with the job's own QueryBatches."""
    from trainer.benchmark.chunks import Chunk
    from trainer.benchmark.encode import encode_job
    from trainer.benchmark.jobs import PairQueries

    chunks: dict[int, Chunk] = {}
    encode_job(job, range(job.store.total), cfg, show=False, sink=chunks.__setitem__)
    return PairQueries.from_chunks(job, (chunks[i] for i in range(job.store.total)))


class EngineCollates:
    """The same model behind the plain Embedder contract (no processor): QueryBatches' old path, the queries
    decoded in the worker and collated by the engine on the model's thread."""

    def __init__(self, embedder):
        self.encode_queries = embedder.encode_queries


@pytest.mark.parametrize("mode", ["direct", "adaptive"])
def test_query_prompts_collated_in_a_worker_equal_the_model_thread(setup, tmp_path, mode):
    """cirr_task7's (image, text) queries: collated in a worker process (the payload that crosses holds the
    processor's batches, no image), in the model's thread, or by the engine itself give the same embeddings,
    routes and token counts, bit for bit."""
    root, _, embedder = setup
    pair = eval_pairs(["cirr_task7"], "test")[0]
    cfg = EvalConfig(mbeir_root=root, output_dir=tmp_path, pairs=[pair.name], mode=mode, max_new_tokens=2,
                     query_batch=3, encode_chunk=4, read_batch=4, device="cpu", progress=False)
    got = {}
    for name, workers in (("worker", 1), ("thread", 0)):
        cfg.num_workers = workers
        got[name] = encode_queries_of(QueryJob(pair, cfg, "test", QueryBatches(embedder, mode, 2, 3),
                                               read_instructions(root)), cfg)
    got["online"] = evaluate.encode_pair_queries(embedder, pair, cfg)  # trainer.bench: the processor timed
    got["engine"] = evaluate.encode_pair_queries(EngineCollates(embedder), pair, cfg)
    job = QueryJob(pair, cfg, "test", QueryBatches(embedder, mode, 2, 3), read_instructions(root))
    payloads = [p.payload for p in job.pieces(0) if p.payload is not None]
    assert all(isinstance(p, PreparedQueries) and p.queries for p in payloads)
    assert all(q.image is None for p in payloads for q in p.queries)
    assert any("pixel_values" in b for p in payloads for b in p.batches)  # the images crossed as pixels only
    online = QueryJob(pair, cfg, "test", QueryBatches(embedder, mode, 2, 3, ahead=False), read_instructions(root))
    raw = [p.payload for p in online.pieces(0) if p.payload is not None]  # collated later, on the model's thread
    assert all(isinstance(p, list) and any(q.image is not None for q in p) for p in raw)
    want = got["engine"]
    assert len(want.qids) == QUERIES and want.stats.as_dict()["missing_images"] == 0
    for res in (got["worker"], got["thread"], got["online"]):
        assert res.qids == want.qids and torch.equal(res.embeddings, want.embeddings)
        assert (res.reasoned, res.generated_tokens) == (want.reasoned, want.generated_tokens)
