"""Check params.yaml (and optional overrides) against the schema, without importing torch or MLflow.

    python -m pipeline.validate                       # params.yaml in the current directory
    python -m pipeline.validate -S train.lr=0.01      # as `dvc exp run -S` would set it
"""

from __future__ import annotations

import argparse

from pipeline.config import PARAMS_FILE, load_params
from pipeline.errors import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value, as `dvc exp run -S` does (repeatable)")
    args = parser.parse_args()
    load_params(args.params, args.overrides)
    print(f"{args.params}: OK")


if __name__ == "__main__":
    run_cli(main)
