"""`python -m pipeline --mbeir_root ROOT --output_dir OUT [flags]`: build M-BEIR-CoT. See pipeline/options.py."""

from __future__ import annotations

import logging
import sys

from common.cli import DEBUG_FLAG, CliParser, run_cli

PROG = "python -m pipeline"


class _FlagCheck(CliParser):
    """Every PipelineOptions flag (Beam's and ours), parsed once up front so that a mistyped flag or a bad value
    is one line; Beam itself would drop an unknown flag with a warning and go on."""

    def add_value_provider_argument(self, *args, **kwargs):
        if args and not args[0].startswith("-") and kwargs.get("nargs") is None:
            kwargs["nargs"] = "?"
        self.add_argument(*args, **kwargs)


def check_flags(argv: list[str]) -> None:
    """ConfigError for an unknown flag (with a suggestion) or a value its flag cannot take (e.g. --limit abc)."""
    if {"-h", "--help"} & set(argv):
        return
    from apache_beam.options.pipeline_options import PipelineOptions

    import pipeline.options  # noqa: F401 - registers MbeirCotOptions as a PipelineOptions subclass

    parser = _FlagCheck(prog=PROG, add_help=False, allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects every flag
    parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    argv = [a for a in argv if a != DEBUG_FLAG]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "httpx", "httpx2", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Beam's GCP module warns at import, on the root logger, that an optional client library is absent.
    logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())
    from pipeline.options import take_dry_run
    from pipeline.run import run

    check_flags(take_dry_run(argv)[0])
    run(argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Build the dataset; bad input or output is one line on stderr and exit status 2 or 3 (common.cli)."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
