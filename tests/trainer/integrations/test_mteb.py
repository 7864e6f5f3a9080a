"""mteb: its own evaluator runs a TRACE checkpoint on the sample's CIRR pair built from the local tree, its recall@k
equals trainer.evaluate's on the same checkpoint and pair (single-positive queries, same pool), and the wrapper
maps mteb's roles, texts and images onto TRACE queries and candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

mteb = pytest.importorskip("mteb")

from mteb._create_dataloaders import create_dataloader  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from common.cli import run_cli  # noqa: E402
from pipeline.mbeir.instructions import query_text  # noqa: E402
from trainer.benchmark import evalset  # noqa: E402
from trainer.integrations import mteb_run  # noqa: E402
from trainer.integrations.mteb_model import TraceMtebEncoder  # noqa: E402
from trainer.integrations.mteb_tasks import local_tasks  # noqa: E402
from trainer.modeling.interface import EncodeResult  # noqa: E402


def _trainer_evaluate(root: str, ckpt: Path, out: Path) -> dict:
    """`python -m trainer.evaluate` on the same checkpoint and pair (in-process: its main is the command)."""
    from trainer.benchmark import evaluate

    evaluate.main(["--mbeir_root", root, "--checkpoint", str(ckpt), "--pairs", "cirr_task7", "--mode", "direct",
                   "--k", "1,5,10", "--output_dir", str(out), "--device", "cpu"])
    return json.loads((out / "results.json").read_text())["pairs"]["cirr_task7"]["local"]


def test_mteb_cirr_run_completes_and_its_recall_equals_trainer_evaluate(sample_root, tiny_checkpoint, trace_model,
                                                                         tmp_path):
    qrels = evalset.read_pair_qrels(sample_root, evalset.eval_pairs(["cirr_task7"])[0]).positives("cirr_task7")
    assert qrels and all(len(p) == 1 for p in qrels.values())  # where the two definitions coincide
    report = mteb_run.main(["--checkpoint", str(tiny_checkpoint), "--tasks", "CIRRIT2IRetrieval", "--mbeir_root",
                            sample_root, "--output_dir", str(tmp_path / "mteb"), "--mode", "direct"],
                           embedder=trace_model)
    written = list((tmp_path / "mteb" / "results").rglob("MBEIRLocal-cirr_task7.json"))
    assert len(written) == 1 and "mode_direct" in written[0].parts
    scores = json.loads(written[0].read_text())["scores"]["test"][0]
    assert scores["main_score"] == scores["ndcg_at_10"] == report["scores"]["MBEIRLocal-cirr_task7"]["ndcg_at_10"]
    theirs = _trainer_evaluate(sample_root, tiny_checkpoint, tmp_path / "eval")
    for k in (1, 5, 10):
        assert scores[f"recall_at_{k}"] == pytest.approx(theirs[f"Recall@{k}"], abs=1e-4)
        assert scores[f"hit_rate_at_{k}"] == pytest.approx(theirs[f"Recall@{k}"], abs=1e-4)
    assert 0 < theirs["Recall@10"] < 1  # the random model ranks neither everything nor nothing right
    assert report["local_reads"]["MBEIRLocal-cirr_task7"]["missing_images"] == 0


def test_adaptive_run_records_routing_and_keeps_modes_apart(sample_root, tiny_checkpoint, trace_model, tmp_path):
    out = tmp_path / "mteb"
    args = ["--checkpoint", str(tiny_checkpoint), "--tasks", "cirr_task7", "--mbeir_root", sample_root,
            "--output_dir", str(out), "--max_new_tokens", "3"]
    report = mteb_run.main(args, embedder=trace_model)
    routing = report["routing"]["MBEIRLocal-cirr_task7"]
    assert routing["queries"] == 20 and 0 <= routing["mean_generated_tokens"] <= 3
    assert json.loads((out / mteb_run.REPORT).read_text())["mode"] == "adaptive"
    assert [p.parent.name for p in out.rglob("MBEIRLocal-cirr_task7.json")] == ["mode_adaptive"]


@pytest.mark.parametrize("pair", ["cirr_task7", "mscoco_task3"])
def test_local_task_holds_what_trainer_evaluate_reads(sample_root, pair):
    (task,) = local_tasks(sample_root, [pair])
    task.load_data()
    split = task.dataset["default"]["test"]
    stats = evalset.ReadStats()
    records = evalset.read_queries(sample_root, task.pair, stats)
    inputs = evalset.query_inputs(sample_root, records, evalset.read_instructions(sample_root), 0, stats)
    assert split["queries"]["id"] == [r.qid for r in records]
    assert split["queries"]["text"] == [q.text for q in inputs]
    assert split["queries"]["image"] == [r.query_img_path for r in records]
    pool = list(evalset.iter_candidates(sample_root, task.pair.pool_file, stats))
    assert split["corpus"]["id"] == [c.did for c in pool]
    assert split["corpus"]["modality"] == [c.modality for c in pool]
    # What mteb's dataloader hands the encoder: an image query (mscoco_task3) keeps its instruction text.
    loader = create_dataloader(split["queries"], task_metadata=task.metadata, prompt_type=PromptType.query,
                               batch_size=len(records))
    batch = next(iter(loader))
    assert batch["text"] == [q.text for q in inputs] and batch["image"] == [r.query_img_path for r in records]
    assert task.metadata.adapted_from == [{"cirr_task7": "CIRRIT2IRetrieval", "mscoco_task3": "MSCOCOI2TRetrieval"}[pair]]


class Recorder:
    """An embedder that records what the wrapper hands it."""

    def __init__(self):
        self.queries, self.candidates = [], []

    def encode_queries(self, queries, mode="adaptive", max_new_tokens=128, batch_size=8):
        self.queries += queries
        return EncodeResult(torch.nn.functional.normalize(torch.ones(len(queries), 4), dim=-1),
                            reasoned=[True] * len(queries), generated_tokens=[2] * len(queries))

    def encode_candidates(self, candidates, batch_size=32):
        self.candidates += candidates
        return torch.nn.functional.normalize(torch.ones(len(candidates), 4), dim=-1)


def _encode(encoder, task_name: str, rows: dict, prompt_type: PromptType):
    meta = mteb.get_task(task_name).metadata
    features = {"id": Value("string"), **{k: ImageFeature() if k == "image" else Value("string") for k in rows}}
    data = Dataset.from_dict({"id": [str(i) for i in range(len(next(iter(rows.values()))))], **rows},
                             features=Features(features))
    loader = create_dataloader(data, task_metadata=meta, prompt_type=prompt_type, batch_size=2)
    return encoder.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=prompt_type)


def test_wrapper_maps_mieb_and_other_tasks_onto_trace_inputs():
    rec = Recorder()
    encoder = TraceMtebEncoder("trace/recorder", embedder=rec, mode="direct")
    big = Image.new("RGB", (1000, 800), (200, 10, 10))
    emb = _encode(encoder, "CIRRIT2IRetrieval", {"text": ["make it blue", "turn it round", "add a dog"],
                                                 "image": [big, big, big]}, PromptType.query)
    assert emb.shape == (3, 4) and emb.dtype == "float32"
    prompt = mteb.get_task("CIRRIT2IRetrieval").metadata.prompt["query"]
    assert [(q.dataset, q.task_id) for q in rec.queries] == [("cirr", 7)] * 3
    assert rec.queries[0].text == query_text(prompt, "make it blue")
    assert max(rec.queries[0].image.size) == 512  # shrunk as trainer.evaluate does
    _encode(encoder, "CIRRIT2IRetrieval", {"image": [big]}, PromptType.document)
    assert rec.candidates[0].modality == "image" and rec.candidates[0].text is None
    _encode(encoder, "SciFact", {"text": ["Vitamin C cures colds."]}, PromptType.query)
    assert (rec.queries[-1].dataset, rec.queries[-1].task_id) == ("SciFact", 1)  # its category t2t
    _encode(encoder, "SciFact", {"text": ["A trial of vitamin C."], "title": ["Trial"]}, PromptType.document)
    assert rec.candidates[-1].text == "Trial A trial of vitamin C." and rec.candidates[-1].modality == "text"
    assert encoder.routing_summary()["CIRRIT2IRetrieval"] == {"queries": 3, "share_reasoned": 1.0,
                                                              "mean_generated_tokens": 2.0}
    with pytest.raises(ValueError, match="mode 'sometimes'"):
        TraceMtebEncoder("trace/recorder", embedder=rec, mode="sometimes")


def test_flag_errors_are_one_line_exit_2(sample_root, tiny_checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(tiny_checkpoint), "--output_dir", str(tmp_path / "o")]
    cases = {("--tasks", "NoSuchTask"): "--tasks NoSuchTask is not an mteb task",
             ("--tasks", "cirr_task7"): "--tasks cirr_task7 is an M-BEIR pair: give --mbeir_root",
             ("--tasks", "cirr_task9", "--mbeir_root", sample_root): "nor an M-BEIR pair",
             ("--tasks", "cirr_task7", "--mbeir_root", str(tmp_path / "none")): "is not a folder",
             ("--tasks", "cirr_task7", "--mbeir_root", sample_root, "--device", "cuda:7"): "--device cuda:7",
             ("--taks", "x"): "unknown flag --taks (did you mean --tasks?)"}
    if torch.cuda.is_available():
        del cases[("--tasks", "cirr_task7", "--mbeir_root", sample_root, "--device", "cuda:7")]
    for args, message in cases.items():
        assert run_cli(mteb_run.main, [*base, *args], prog=mteb_run.PROG) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    missing = ["--checkpoint", str(tmp_path / "nockpt"), "--tasks", "cirr_task7", "--mbeir_root", sample_root,
               "--output_dir", str(tmp_path / "o")]
    assert run_cli(mteb_run.main, missing, prog=mteb_run.PROG) == 2
    assert "nockpt" in capsys.readouterr().err


def test_trainer_evaluate_dispatches_mteb(tmp_path):
    """`python -m trainer.evaluate mteb ...` reaches this command: its flags, its error style."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    run = subprocess.run([sys.executable, "-m", "trainer.evaluate", "mteb", "--checkpoint", "c", "--taks", "x"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == ("python -m trainer.evaluate mteb: error: unknown flag --taks (did you mean "
                                  "--tasks?) (see python -m trainer.evaluate mteb --help)")


def test_reruns_skip_finished_tasks_and_the_output_folder_is_claimed(sample_root, tmp_path, capsys):
    out = tmp_path / "mteb"
    args = ["--checkpoint", "trace/recorder", "--tasks", "cirr_task7", "--mbeir_root", sample_root,
            "--output_dir", str(out), "--mode", "direct"]
    first = Recorder()
    mteb_run.main(args, embedder=first)
    assert (len(first.queries), len(first.candidates)) == (20, 108)
    again = Recorder()
    mteb_run.main(args, embedder=again)
    assert again.queries == again.candidates == []  # its result file is there: mteb skips the task
    mteb_run.main([*args, "--rerun"], embedder=again)
    assert len(again.queries) == 20
    assert json.loads((out / ".mbeir-cot.json").read_text())["command"] == mteb_run.COMMAND
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code = run_cli(lambda argv: mteb_run.main(argv, embedder=Recorder()),
                   [*args[:-4], "--output_dir", str(foreign)], prog=mteb_run.PROG)
    assert code == 2 and "choose an empty folder, or pass --overwrite" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and not (foreign / "results").exists()


def test_a_hub_checkpoint_is_its_snapshot_at_its_commit(tiny_checkpoint, hub):
    """A Hub id resolves to its downloaded snapshot, the mteb revision being the commit hash; a local folder's
    revision is its content fingerprint, so an edited checkpoint never reuses an earlier result."""
    import subprocess
    import sys

    from tests.hub_server import HUB_TOKEN
    from trainer.release import upload

    commit = upload.publish_model(tiny_checkpoint, "tester/trace-mteb").commit_oid
    root = Path(__file__).resolve().parents[3]
    code = "import sys; from trainer.integrations.mteb_run import resolve_checkpoint as r; print(*r(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", code, "tester/trace-mteb"], cwd=root, capture_output=True, text=True,
                         env=hub.env(HF_TOKEN=HUB_TOKEN, PYTHONPATH=str(root)), timeout=120)
    assert run.returncode == 0, run.stderr
    folder, revision = run.stdout.split()
    assert revision == commit and (Path(folder) / "trace_config.json").is_file()
    local, fingerprint = mteb_run.resolve_checkpoint(str(tiny_checkpoint))
    assert local == str(tiny_checkpoint) and len(fingerprint) == 16
