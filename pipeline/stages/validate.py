"""Check params.yaml (and optional overrides) against the schema, without importing torch or MLflow.

python -m pipeline.stages.validate                       # params.yaml in the current directory
python -m pipeline.stages.validate -S train.lr=0.01      # as `dvc exp run -S` would set it
python -m pipeline.stages.validate --stamp FILE          # as a DVC stage ahead of prepare (see --stamp)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import console
from pipeline.config import PARAMS_FILE, load_params
from pipeline.errors import run_cli
from pipeline.files import atomic_path

log = console.get_logger(__name__)

# Always the same bytes: a stage that depends on the stamp must not rerun because validation ran again.
STAMP_TEXT = "params.yaml passed python -m pipeline.stages.validate\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value, as `dvc exp run -S` does (repeatable)",
    )
    parser.add_argument(
        "--stamp",
        type=Path,
        default=None,
        metavar="FILE",
        help="write FILE (constant content) once the params are valid: as a DVC stage's output "
        "that prepare depends on, it makes `dvc repro` stop at a bad params.yaml before DVC "
        "deletes the outputs of the stage it would rerun",
    )
    args = parser.parse_args()
    load_params(args.params, args.overrides)
    if args.stamp:
        with atomic_path(args.stamp) as tmp:
            tmp.write_text(STAMP_TEXT)
    log.info(f"{args.params}: OK")


if __name__ == "__main__":
    run_cli(main)
