"""Every flag of the pipeline, in one PipelineOptions subclass (Beam's --snake_case convention).

A default is written once, where the setting lives: the teacher client's in `TeacherConfig`, the rule filter's
and the verifier threshold (the paper's numbers) in validators.defaults, the request builder's in
pipeline.teacher.prompting; here they are only referred to. TEACHER_FLAGS and RULE_FLAGS name the flags that
are fields of a config dataclass; pipeline.plan passes them on by these tables.
"""

from __future__ import annotations

import argparse
import dataclasses

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from common.errors import ConfigError
from pipeline.mbeir.images import CHECK_MODES
from pipeline.mbeir.layout import DATASET_IDS, SPLITS, TASKS
from pipeline.mbeir.lines import DEFAULT_MAX_LINE_BYTES
from pipeline.routing import JUDGE_MIN_CONFIDENCE
from pipeline.teacher.config import AUTO_TRANSPORT, TEACHER_MODES, TRANSPORTS, TeacherConfig
from pipeline.teacher.prompting import DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_SIDE
from validators.defaults import VERIFIER_MIN_CONFIDENCE, RuleConfig

ROUTINGS = ("dataset", "judge", "heuristic")
# flag -> TeacherConfig field: the flag's default is the field's
TEACHER_FLAGS = {"api_key_env": "api_key_env", "api_key_secret": "api_key_secret", "max_in_flight": "max_in_flight",
                 "rpm": "rpm", "tpm": "tpm", "teacher_timeout_s": "timeout_s", "max_retries": "max_retries",
                 "max_reasks": "max_reasks", "flush_interval_s": "flush_interval_s"}
# flag -> RuleConfig field: a flag left unset (None) leaves the field's default
RULE_FLAGS = {"reasoning_tokens": "reasoning_tokens", "answer_tokens": "answer_tokens", "tokenizer": "tokenizer_spec"}
DEFAULT_LOCAL_RUNNER = "FnApiRunner"  # Prism (Beam's DirectRunner default) cannot start offline: ENVIRONMENT.md
LOCAL_RUNNERS = frozenset({"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                           "PrismRunner"})
# The in-process runner holds every shuffle's input, about 6 KB per query: 50,000 queries peak near 0.6 GB.
LOCAL_PARTITION_QUERIES = 50_000
# --local_workers auto: one worker process per core once a run has this many query lines (a worker process
# costs about 1.5 s to start and its own interpreter, Beam and libraries: smaller runs stay in one process).
AUTO_WORKERS_MIN_QUERIES = 5_000
TEACHER_PROCESS = ("auto", "on", "off")
JOURNAL_LOOKUPS = ("auto", "join", "index")


def is_local(opts: PipelineOptions) -> bool:
    """Whether the run is on a runner of this machine (partitions, worker processes and the teacher process
    apply only there)."""
    runner = opts.view_as(StandardOptions).runner
    return (runner if isinstance(runner, str) else type(runner).__name__) in LOCAL_RUNNERS


def local_worker_count(setting: str) -> int | None:
    """--local_workers as a count of worker processes, None for 'auto'; ConfigError for anything else."""
    if setting == "auto":
        return None
    try:
        workers = int(setting)
    except ValueError:
        workers = 0
    if workers < 1:
        raise ConfigError(f"--local_workers must be 'auto' or a whole number of at least 1, got {setting!r}")
    return workers


def _field_default(cls, name: str):
    (field,) = (f for f in dataclasses.fields(cls) if f.name == name)
    return field.default


def _teacher(flag: str):
    return _field_default(TeacherConfig, TEACHER_FLAGS[flag])


def _rule_pair(flag: str) -> str:
    return ",".join(map(str, _field_default(RuleConfig, RULE_FLAGS[flag])))


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _int_pair(value: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in value.split(","))
    return lo, hi


DRY_RUN_FLAG = "--dry_run"
DRY_RUN_HELP = "read, join and route; write the plan (requests, tokens, cost) without teacher calls"


def take_dry_run(argv: list[str]) -> tuple[list[str], bool]:
    """Beam's own TestOptions already defines --dry_run (taking a value), so ours, a plain switch, is taken out
    of argv before Beam parses it."""
    rest = [a for a in argv if a != DRY_RUN_FLAG]
    return rest, len(rest) != len(argv)


class MbeirCotOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("input")
        g.add_argument("--mbeir_root", default=None,
                       help="M-BEIR root: a local folder, any Beam FileSystems path (gs://...), or hf://TIGER-Lab/M-BEIR")
        g.add_argument("--split", default="train", choices=SPLITS)
        g.add_argument("--datasets", type=_csv, default=None,
                       help=f"comma-separated dataset stems (default all): {','.join(DATASET_IDS)}")
        g.add_argument("--tasks", type=lambda v: [int(t) for t in _csv(v)], default=None,
                       help=f"comma-separated task ids to keep (default all): {','.join(map(str, TASKS))}")
        g.add_argument("--limit", type=int, default=None, help="read at most this many query lines per query file")
        g.add_argument("--instruction_seed", type=int, default=0,
                       help="seed of the per-query instruction choice (UniIR picks one prompt at random)")
        g.add_argument("--check_images", default="decode", choices=CHECK_MODES,
                       help="reject records whose images are missing (exists) or also unreadable (decode); an "
                            "image whose real path leaves the M-BEIR root is rejected whatever this says")
        g.add_argument("--max_line_bytes", type=int, default=DEFAULT_MAX_LINE_BYTES,
                       help="a query or pool line longer than this is rejected (line_too_long) without being parsed "
                            "or held in memory; real M-BEIR lines stay under a few KB")
        g.add_argument("--hf_cache_dir", default=None, help="download folder for hf:// roots")
        g.add_argument("--download_images", action="store_true",
                       help="with an hf:// root, also download the ~169 GB image archive parts")

        g = parser.add_argument_group("output")
        g.add_argument("--output_dir", required=False, default=None,
                       help="output folder (local or gs://): new, empty, or this command's earlier output (marked by "
                            ".mbeir-cot.json, or holding its manifest.json); a run locks it while it writes")
        g.add_argument("--overwrite", action="store_true",
                       help="write into an --output_dir that holds other files: they stay untouched (a run deletes or "
                            "replaces only files it wrote), and one named like a run's output stops the run")
        g.add_argument("--num_shards", type=int, default=0, help="data shards; 0 = from the row count")
        g.add_argument("--partition_queries", type=int, default=LOCAL_PARTITION_QUERIES,
                       help="local runners only: run the queries in partitions of about this many lines each, "
                            "so memory stays flat at any input size (pipeline/partition.py); 0 = one pass")
        g.add_argument("--local_workers", default="auto",
                       help="local runners only: worker processes running the graph (Beam's multi_processing "
                            "mode); 'auto' = one per core idle now (the machine's CPU time sampled for a moment) for runs of at least "
                            f"{AUTO_WORKERS_MIN_QUERIES} query lines, else 1 (in-process); an explicit "
                            "--direct_num_workers/--direct_running_mode wins; with teacher calls and a teacher "
                            "process, auto leaves one idle core to it")
        g.add_argument("--teacher_process", default="auto", choices=TEACHER_PROCESS,
                       help="local runners only: run the teacher client (HTTP, image encoding, journal) in a process "
                            "of its own beside each graph process; 'auto' = on for runs that call the teacher with at "
                            f"least {AUTO_WORKERS_MIN_QUERIES} query lines on a machine with 2 or more cores idle now")
        g.add_argument("--embed_images", action="store_true",
                       help="store image bytes in the rows as Hugging Face Image structs")

        g = parser.add_argument_group("routing")
        g.add_argument("--routing", default="dataset", choices=ROUTINGS,
                       help="dataset: the paper's published composition; judge: the teacher labels each query; "
                            "heuristic: cheap rules, no calls")
        g.add_argument("--judge_min_confidence", type=float, default=JUDGE_MIN_CONFIDENCE,
                       help="a 'complex' judge label below this confidence routes direct")

        g = parser.add_argument_group("teacher")
        g.add_argument("--teacher_base_url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
        g.add_argument("--teacher_model", default=None)
        g.add_argument("--api_key_env", default=_teacher("api_key_env"),
                       help="environment variable holding the API key")
        g.add_argument("--api_key_secret", default=_teacher("api_key_secret"),
                       help="Google Secret Manager secret holding the key (projects/P/secrets/NAME), read by each "
                            "worker when the variable is unset: Dataflow workers do not see the launcher's environment")
        g.add_argument("--teacher_transport", default=AUTO_TRANSPORT, choices=(AUTO_TRANSPORT, *TRANSPORTS),
                       help="aiohttp / httpx: the openai client on that HTTP transport; direct: one aiohttp session "
                            "posting the chat completion with the openai client's headers and error types (about "
                            "0.45 ms less CPU per call; OpenAI-compatible servers, no Azure); auto = direct for a "
                            "teacher on this machine (loopback: vLLM, SGLang, the reference teacher), aiohttp for "
                            "any other")
        g.add_argument("--max_in_flight", type=int, default=_teacher("max_in_flight"),
                       help="requests in flight per worker process")
        g.add_argument("--rpm", type=float, default=_teacher("rpm"), help="requests per minute per worker process")
        g.add_argument("--tpm", type=float, default=_teacher("tpm"), help="tokens per minute per worker process")
        g.add_argument("--teacher_timeout_s", type=float, default=_teacher("teacher_timeout_s"))
        g.add_argument("--max_retries", type=int, default=_teacher("max_retries"),
                       help="retries per request on 429, 5xx, timeouts")
        g.add_argument("--max_reasks", type=int, default=_teacher("max_reasks"),
                       help="re-asks when the output breaks the format")
        g.add_argument("--temperature", type=float, default=0.2)
        g.add_argument("--max_tokens", type=int, default=512)
        g.add_argument("--max_prompt_tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS,
                       help="a request whose prompt is estimated above this (text/4 + 256 per image) is never sent; "
                            "its query is rejected as prompt_too_long (the dry run counts them)")
        g.add_argument("--skip_preflight", action="store_true",
                       help="do not check the teacher (models list) before the run, e.g. for a rerun the journal "
                            "answers while the teacher is down")
        g.add_argument("--image_max_side", type=int, default=DEFAULT_MAX_SIDE,
                       help="images sent to the teacher are shrunk to this longer side (a JPEG already within it is "
                            "sent as it is)")
        g.add_argument("--image_mode", default="data_url", choices=("data_url", "url"))
        g.add_argument("--image_url_base", default=None, help="with --image_mode url: URL prefix of the image root")
        g.add_argument("--journal_dir", default=None, help="response journal (default OUTPUT_DIR/journal)")
        g.add_argument("--flush_interval_s", type=float, default=_teacher("flush_interval_s"))
        g.add_argument("--journal_lookup", default="auto", choices=JOURNAL_LOOKUPS,
                       help="how a rerun finds its journaled answers: join (a shuffle of the journal with the "
                            "requests; no worker holds the whole journal), index (each process indexes the journal "
                            "and looks keys up as requests arrive, so the CoT, rule and verifier stages overlap); "
                            "auto = index on local runners, join elsewhere; batch mode always joins")
        g.add_argument("--teacher_mode", default=TEACHER_MODES[0], choices=TEACHER_MODES,
                       help="batch: submit to the OpenAI Batch API (half price); rerun the same command to collect")
        g.add_argument("--max_cost_usd", type=float, default=None,
                       help="stop calling once this much is spent (per worker process); the rest stays pending")
        g.add_argument("--max_requests", type=int, default=None,
                       help="stop calling after this many requests (per worker process); the rest stays pending")
        g.add_argument("--price_table", default=None,
                       help="JSON file or 'model=in:out,...' in USD per 1M prompt/completion tokens")

        g = parser.add_argument_group("quality gate")
        g.add_argument("--verifier", default="on", choices=("on", "off"))
        g.add_argument("--verifier_threshold", type=float, default=VERIFIER_MIN_CONFIDENCE,
                       help=f"keep when confidence is above this (default: PAPER §2 Phase 3, {VERIFIER_MIN_CONFIDENCE})")
        g.add_argument("--reasoning_tokens", type=_int_pair, default=None,
                       help=f"min,max (default {_rule_pair('reasoning_tokens')})")
        g.add_argument("--answer_tokens", type=_int_pair, default=None,
                       help=f"min,max (default {_rule_pair('answer_tokens')})")
        g.add_argument("--tokenizer", default=None,
                       help="teacher tokenizer: HF name or path; default an approximate offline counter")
