"""`python -m pipeline --mbeir_root ROOT --output_dir OUT [flags]`: build M-BEIR-CoT. See pipeline/options.py."""

from __future__ import annotations

import logging
import sys

from pipeline.mbeir.errors import ConfigError, OutputError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "httpx", "httpx2", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pipeline.run import run

    try:
        run(argv)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"output error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
