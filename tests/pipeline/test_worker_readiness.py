"""Dataflow-worker readiness, offline: the wheel carries prompts and schemas, every DoFn and transform argument
survives pickling into a fresh process, and every data path goes through Beam FileSystems (testfs://)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from pipeline.build import build
from pipeline.options import MbeirCotOptions
from pipeline.run import resolve_plan
from pipeline.stats import check_identity
from tests.pipeline import testfs
from tests.pipeline.conftest import run_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ("setup.py", "pyproject.toml", "common", "pipeline", "validators", "trainer", "prompts", "schemas")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The project wheel, built from a copy of the sources (no build/ or egg-info in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.exists(path):
            shutil.copy(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(dist)], check=True, capture_output=True)
    (path,) = glob.glob(str(dist / "*.whl"))
    return path


def test_wheel_ships_prompts_and_schemas(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, ext in (("prompts", ".txt"), ("schemas", ".json")):
        expected = {f"{folder}/{n}" for n in os.listdir(os.path.join(REPO, folder)) if n.endswith(ext)}
        assert expected and expected <= names, expected - names


def test_installed_wheel_runs_a_dry_run_outside_the_checkout(wheel, sample_root, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies come from the project venv (a .pth line), the project itself only from the wheel.
    with open(os.path.join(site, "project-deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import pipeline, prompts, schemas; print(pipeline.__file__); "
                            "print(prompts.load('cot_cir').sha); print(sorted(schemas.load('mbeir_cot_row')))"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(site) and REPO not in where.splitlines()[0]
    out = tmp_path / "out"
    proc = subprocess.run([python, "-m", "pipeline", "--mbeir_root", sample_root, "--output_dir", str(out),
                           "--limit", "2", "--dry_run"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "stats.json") as f:
        stats = json.load(f)
    assert stats["input"] == 20 and check_identity(stats, dry_run=True) is None


def _full_graph(sample_root: str, out: str) -> beam.Pipeline:
    argv = ["--mbeir_root", sample_root, "--output_dir", out, "--teacher_base_url", "http://127.0.0.1:9/v1",
            "--teacher_model", "reference-teacher", "--routing", "judge", "--runner", "FnApiRunner"]
    opts = MbeirCotOptions(argv)
    p = beam.Pipeline(options=opts)
    build(p, opts, resolve_plan(opts))
    return p


class _Collect(beam.pipeline.PipelineVisitor):
    def __init__(self):
        self.parts: dict[str, object] = {}

    def visit_transform(self, node) -> None:
        t = node.transform
        if isinstance(t, beam.ParDo):
            args = [a for a in t.args if not isinstance(a, beam.pvalue.AsSideInput)]
            kwargs = {k: v for k, v in t.kwargs.items() if not isinstance(v, beam.pvalue.AsSideInput)}
            self.parts[node.full_label] = (t.fn, args, kwargs)
        elif isinstance(t, (beam.CombineGlobally, beam.CombinePerKey)):
            self.parts[node.full_label] = (t.fn, t.args, t.kwargs)


def test_every_dofn_and_argument_unpickles_in_a_fresh_process(sample_root, tmp_path):
    import cloudpickle

    p = _full_graph(sample_root, str(tmp_path / "out"))
    collect = _Collect()
    p.visit(collect)
    labels = set(collect.parts)
    for stage in ("Teacher", "Verifier", "Route", "WriteData", "MergeEvents"):
        assert any(label.startswith(stage) for label in labels), stage
    blobs = {label: cloudpickle.dumps(part) for label, part in collect.parts.items()}
    # What a runner ships: the pickled payloads of the portable graph.
    from apache_beam.portability import common_urns, python_urns
    from apache_beam.portability.api import beam_runner_api_pb2 as pb

    payloads = {}
    for t in p.to_runner_api().components.transforms.values():
        fn = None
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            fn = pb.ParDoPayload.FromString(t.spec.payload).do_fn
        elif t.spec.urn == common_urns.composites.COMBINE_PER_KEY.urn:
            fn = pb.CombinePayload.FromString(t.spec.payload).combine_fn
        if fn is not None and fn.urn in (python_urns.PICKLED_DOFN_INFO, python_urns.PICKLED_COMBINE_FN):
            payloads[t.unique_name] = fn.payload
    assert any(name.startswith("Teacher") for name in payloads)
    (tmp_path / "blobs.pkl").write_bytes(cloudpickle.dumps({"parts": blobs, "payloads": payloads}))
    check = (
        "import cloudpickle, sys\n"
        "from apache_beam.internal import pickler\n"
        "data = cloudpickle.loads(open(sys.argv[1], 'rb').read())\n"
        "bad = []\n"
        "for label, blob in data['parts'].items():\n"
        "    try: cloudpickle.loads(blob)\n"
        "    except Exception as e: bad.append(f'{label}: {e!r}')\n"
        "for label, blob in data['payloads'].items():\n"
        "    try: pickler.loads(blob)\n"
        "    except Exception as e: bad.append(f'payload {label}: {e!r}')\n"
        "print(len(data['parts']) + len(data['payloads'])); print('\\n'.join(bad))\n")
    proc = subprocess.run([sys.executable, "-c", check, str(tmp_path / "blobs.pkl")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, *bad = proc.stdout.splitlines()
    assert int(count) == len(blobs) + len(payloads) and not [b for b in bad if b], bad


@pytest.fixture()
def fs_root(sample_root, tmp_path, monkeypatch):
    """testfs:// served from tmp_path/fs holding a copy of the sample; the working directory is empty, so a
    plain open() of a testfs:// path cannot find anything."""
    root = tmp_path / "fs"
    shutil.copytree(sample_root, root / "mbeir")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with testfs.mounted(str(root)):
        yield root
    assert not os.listdir(cwd), f"something wrote {os.listdir(cwd)} with a plain local path"


def test_dry_run_over_a_remote_scheme(fs_root):
    stats = run_pipeline("testfs://mbeir", "testfs://out", "--dry_run", limit="3")
    assert stats["input"] == 30 and check_identity(stats, dry_run=True) is None
    assert json.loads((fs_root / "out" / "stats.json").read_text()) == stats


def test_full_run_over_a_remote_scheme(fs_root, teacher):
    stats = run_pipeline("testfs://mbeir", "testfs://out", limit="3", teacher=teacher)
    assert check_identity(stats, dry_run=False) is None and teacher.stats()["calls"] > 0
    out = fs_root / "out"
    rows = sum(pq.read_table(path).num_rows for path in glob.glob(str(out / "data" / "*.parquet")))
    assert rows == sum(stats["accepted"].values()) > 0
    assert glob.glob(str(out / "journal" / "journal-*.jsonl"))
    for name in ("README.md", "manifest.json"):
        assert (out / name).exists(), name


def test_partitioned_run_over_a_remote_scheme(fs_root, teacher):
    stats = run_pipeline("testfs://mbeir", "testfs://out", "--partition_queries", "12", limit="3", teacher=teacher)
    out = fs_root / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["partitions"] == 3 and not (out / "_parts").exists()
    rows = sum(pq.read_table(out / f["path"]).num_rows for f in manifest["files"] if f["path"].startswith("data/"))
    assert rows == sum(stats["accepted"].values()) > 0
