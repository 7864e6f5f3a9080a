"""--local_workers: worker processes of a local run, chosen automatically; the same output whatever the count."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from pipeline.local import local_workers, teacher_process
from pipeline.options import AUTO_WORKERS_MIN_QUERIES
from tests.pipeline.conftest import output_files, run_pipeline
from tests.pipeline.test_partition import _table, _with_duplicates


def test_auto_uses_every_core_for_big_runs_and_one_process_for_small_ones():
    assert local_workers("auto", AUTO_WORKERS_MIN_QUERIES, cores=8) == 8
    assert local_workers("auto", None, cores=2) == 2  # size unknown (--partition_queries 0): counted as big
    assert local_workers("auto", AUTO_WORKERS_MIN_QUERIES - 1, cores=8) == 1
    assert local_workers("auto", 10**6, cores=1) == 1
    assert local_workers("3", 10, cores=1) == 3  # an explicit count wins


def _sampler(*samples: tuple[float, float]):
    """A cpu_times stand-in answering (idle, total) ticks from `samples`, one per call."""
    answers = iter(samples)
    return lambda: next(answers)


def test_auto_counts_the_cores_idle_now_from_a_sample_of_cpu_time(monkeypatch):
    import pipeline.local as local

    monkeypatch.setattr(local.os, "getloadavg", lambda: (12.0, 12.0, 12.0))  # a job that ended a minute ago
    slept = []
    # 8 cores over the interval: 800 ticks, of which 780 idle -> 7.8 idle cores -> 8
    assert local.idle_cores(8, _sampler((1000, 5000), (1780, 5800)), 0.3, slept.append) == 8
    assert slept == [0.3]
    assert local.idle_cores(8, _sampler((0, 0), (500, 800)), 0, slept.append) == 5  # 3 cores busy elsewhere
    assert local.idle_cores(8, _sampler((0, 0), (10, 800)), 0, slept.append) == 1  # busy: never below 1
    assert local.idle_cores(2, _sampler((0, 0), (100, 200)), 0, slept.append) == 1  # one of two busy
    monkeypatch.setattr(local, "idle_cores", lambda: 3)
    assert local_workers("auto", None) == 3 and teacher_process("auto", True, None)


def test_without_proc_stat_the_load_average_decides(monkeypatch, tmp_path):
    import pipeline.local as local

    assert local.cpu_times(str(tmp_path / "no-stat")) is None
    monkeypatch.setattr(local.os, "getloadavg", lambda: (5.0, 0.0, 0.0))
    assert local.idle_cores(8, lambda: None) == 3
    (tmp_path / "stat").write_text("cpu  100 5 20 300 7 1 2 3 40 0\ncpu0 ...\n")
    assert local.cpu_times(str(tmp_path / "stat")) == (307, 438)  # idle + iowait; guest is already in user


def test_both_autos_of_a_run_share_one_sample(monkeypatch, capsys):
    from apache_beam.options.pipeline_options import DirectOptions

    import pipeline.local as local
    from pipeline.plan import RunPlan, parse_options
    from pipeline.teacher.config import TeacherConfig
    from validators.defaults import RuleConfig

    calls = []
    monkeypatch.setattr(local, "idle_cores", lambda: calls.append(1) or 4)
    opts, _ = parse_options(["--output_dir", "o"])
    plan = RunPlan(root="r", query_files=[], pool_files=[], output_dir="o", journal_dir="j",
                   teacher=TeacherConfig(base_url="http://127.0.0.1:1/v1", model="m"), rules=RuleConfig(),
                   verifier_threshold=0.7)
    assert local.apply(opts, plan, [], None).teacher.own_process  # 4 idle cores: a teacher process ...
    assert opts.view_as(DirectOptions).direct_num_workers == 3  # ... and the graph on the 3 others
    assert calls == [1]
    assert "3 graph worker processes" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_bad_worker_count_is_a_configuration_error(bad):
    with pytest.raises(ConfigError, match="--local_workers"):
        local_workers(bad, 100)


def _same_outputs_whatever(flag: str, values: tuple[str, str], sample_root, tmp_path, teacher, *extra: str) -> None:
    """Runs the duplicates tree once per value of `flag`: the same stats, tables and data files each time."""
    root = str(tmp_path / "dup")
    _with_duplicates(sample_root, root)
    outs = []
    for value in values:
        out = str(tmp_path / f"{flag.strip('-')}-{value}")
        stats = run_pipeline(root, out, "--datasets", "mscoco,cirr", "--partition_queries", "0", *extra,
                             flag, value, teacher=teacher, limit=None)
        outs.append((out, stats))
    (first, first_stats), (second, second_stats) = outs
    assert second_stats["teacher"]["requests"] == first_stats["teacher"]["requests"] > 0
    for key in ("input", "routed", "accepted", "rejected", "failed", "per_dataset", "pool"):
        assert second_stats[key] == first_stats[key], key
    for folder in ("data", "rejects", "failed"):
        assert _table(second, folder) == _table(first, folder), folder
    assert {k: v for k, v in output_files(second).items() if k.startswith("data/")} == {
        k: v for k, v in output_files(first).items() if k.startswith("data/")}


def test_worker_processes_write_what_one_process_writes(sample_root, tmp_path, teacher):
    _same_outputs_whatever("--local_workers", ("1", "2"), sample_root, tmp_path, teacher)


def test_auto_gives_a_large_run_with_teacher_calls_a_teacher_process_once_two_cores_are_idle():
    assert teacher_process("auto", True, AUTO_WORKERS_MIN_QUERIES, cores=2)
    assert not teacher_process("auto", True, AUTO_WORKERS_MIN_QUERIES, cores=1)  # a busy machine: one process
    assert not teacher_process("auto", True, AUTO_WORKERS_MIN_QUERIES - 1, cores=8)  # small runs stay in one
    assert not teacher_process("auto", False, None, cores=8)  # no calls (dry run, direct datasets only)
    assert teacher_process("on", False, 1, cores=1) and not teacher_process("off", True, None, cores=8)
    # the teacher process has one idle core: the graph gets the others
    assert local_workers("auto", None, cores=2, teacher_core=True) == 1
    assert local_workers("auto", None, cores=8, teacher_core=True) == 7


def test_a_teacher_process_writes_what_the_in_process_client_writes(sample_root, tmp_path, teacher):
    _same_outputs_whatever("--teacher_process", ("off", "on"), sample_root, tmp_path, teacher,
                           "--local_workers", "1")


def test_journal_lookup_by_index_writes_what_the_journal_join_writes(sample_root, tmp_path, teacher):
    # the duplicates tree asks some keys twice in one run: called once either way, the answer fans out
    _same_outputs_whatever("--journal_lookup", ("join", "index"), sample_root, tmp_path, teacher,
                           "--local_workers", "1")
