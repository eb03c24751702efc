"""`dvc exp run` with its `-S` overrides checked against the schema first, sweeps included.

    python -m pipeline.stages.exp --queue -S 'model.name=mlp,cnn' -S 'train.lr=0.001,0.01'
    python -m pipeline.stages.exp -S train.lr=0.01          # runs at once, like dvc exp run

DVC applies `-S` values without checking them (a typo becomes a new key, a wrong type fails only when the stage
runs, after training has been queued). Here every combination of the comma-separated sweep values is validated like
params.yaml; only if all pass are the same arguments handed to `dvc exp run`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys

from pipeline import console
from pipeline.config import PARAMS_FILE, ParamsError, load_params
from pipeline.errors import run_cli

log = console.get_logger(__name__)

SET_FLAGS = ("-S", "--set-param")


def sweep_values(value: str) -> list[str]:
    """Hydra's sweep syntax: top-level commas separate values; commas inside [...], {...} or quotes do not."""
    values, depth, quote, current = [], 0, "", ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return [*values, current]


def overrides_of(args: list[str]) -> list[list[str]]:
    """[['train.lr=0.001', 'train.lr=0.01'], ...]: the choices of each -S, from dvc exp run's arguments."""
    choices = []
    for i, arg in enumerate(args):
        if arg in SET_FLAGS and i + 1 < len(args):
            item = args[i + 1]
        elif arg.startswith(("--set-param=", "-S")) and arg not in SET_FLAGS:
            item = arg.split("=", 1)[1] if arg.startswith("--set-param=") else arg[2:]
        else:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"-S {item}: expected key=value, e.g. -S train.lr=0.01.")
        key = key.lstrip("+")  # Hydra's +key (add) and ++key (add or replace): the key is checked all the same
        file, colon, key = key.rpartition(":")  # DVC's `-S params.yaml:train.lr=...`
        if colon and file != PARAMS_FILE:
            continue  # another params file: not ours to check
        choices.append([f"{key}={v.strip().strip(chr(39) + chr(34))}" for v in sweep_values(value)])
    return choices


def validate_sweep(args: list[str], params_file: str = PARAMS_FILE) -> int:
    """Validate every combination; returns how many experiments the arguments describe."""
    combinations = list(itertools.product(*overrides_of(args)))
    for combination in combinations:
        try:
            load_params(params_file, list(combination))
        except ParamsError as exc:
            raise ParamsError(f"with -S {' -S '.join(combination)}:\n{exc}\nNothing was queued or run.") from None
    return len(combinations)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    count = validate_sweep(args)
    log.info(f"exp: {count} experiment(s) validated against the schema; handing over to dvc exp run")
    dvc = shutil.which("dvc") or "dvc"
    os.execv(dvc, [dvc, "exp", "run", *args])


if __name__ == "__main__":
    run_cli(main)
