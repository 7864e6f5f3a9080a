"""The plan: flags that are config-dataclass fields take the dataclass's default and reach its field."""

from __future__ import annotations

import pytest

from pipeline.options import RULE_FLAGS, TEACHER_FLAGS
from pipeline.plan import parse_options, resolve_plan
from pipeline.teacher.config import TeacherConfig
from validators.defaults import VERIFIER_MIN_CONFIDENCE, RuleConfig

URL = "http://127.0.0.1:9/v1"
GIVEN = {"api_key_env": "OTHER_KEY", "api_key_secret": "projects/p/secrets/s", "max_in_flight": 7, "rpm": 60.0,
         "tpm": 9000.0, "teacher_timeout_s": 3.5, "max_retries": 1, "max_reasks": 0, "flush_interval_s": 0.25,
         "reasoning_tokens": (10, 20), "answer_tokens": (1, 9)}


def _plan(sample_root: str, tmp_path, *flags: str):
    opts, dry_run = parse_options(["--mbeir_root", sample_root, "--output_dir", str(tmp_path / "out"), "--dry_run",
                                   "--teacher_base_url", URL, "--teacher_model", "m", *flags])
    return resolve_plan(opts, dry_run)


def test_unset_flags_leave_the_dataclass_defaults(sample_root, tmp_path):
    plan = _plan(sample_root, tmp_path)
    default = TeacherConfig(base_url=URL, model="m")
    assert {f: getattr(plan.teacher, f) for f in TEACHER_FLAGS.values()} == {
        f: getattr(default, f) for f in TEACHER_FLAGS.values()}
    assert plan.rules == RuleConfig()
    assert plan.verifier_threshold == VERIFIER_MIN_CONFIDENCE


def test_every_flag_reaches_its_field(sample_root, tmp_path):
    assert set(GIVEN) == set(TEACHER_FLAGS) | set(RULE_FLAGS) - {"tokenizer"}  # a new flag gets a case here
    flags = [a for flag, value in GIVEN.items()
             for a in (f"--{flag}", ",".join(map(str, value)) if isinstance(value, tuple) else str(value))]
    plan = _plan(sample_root, tmp_path, *flags)
    for flag, field in TEACHER_FLAGS.items():
        assert getattr(plan.teacher, field) == GIVEN[flag], flag
    assert (plan.rules.reasoning_tokens, plan.rules.answer_tokens) == ((10, 20), (1, 9))


@pytest.mark.parametrize("flag", ["--reasoning_tokens", "--answer_tokens", "--verifier_threshold"])
def test_help_states_the_dataclass_default(flag, capsys):
    from pipeline.options import MbeirCotOptions

    with pytest.raises(SystemExit):
        MbeirCotOptions(["--help"]).view_as(MbeirCotOptions)
    text = " ".join(capsys.readouterr().out.split())
    rules = RuleConfig()
    expected = {"--reasoning_tokens": "default {},{}".format(*rules.reasoning_tokens),
                "--answer_tokens": "default {},{}".format(*rules.answer_tokens),
                "--verifier_threshold": f"{VERIFIER_MIN_CONFIDENCE})"}[flag]
    assert expected in text.rsplit(flag, 1)[1][:200]  # its help, after the usage line
