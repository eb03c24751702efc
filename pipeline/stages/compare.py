"""All experiments side by side in a terminal: the params that differ between them and the headline metrics.

    python -m pipeline.stages.compare                      # workspace, branches, queued/running/finished experiments
    python -m pipeline.stages.compare --sort-by accuracy   # any headline metric
    python -m pipeline.stages.compare -- --rev HEAD~1      # anything after -- goes to `dvc exp show`

It formats `dvc exp show --json` (DVC collects everything; its own table shows every param and cannot shorten
column titles, so at 120 columns it collapses to `…`). Only params whose value differs between the listed
experiments are shown, by their params.yaml key; the rows are sorted by the test metric that matches
train.monitor (f1_macro for val/loss, which has no test counterpart), best first, rows without metrics last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from typing import Any

from pipeline.config import HEADLINE_METRICS, PARAMS_FILE
from pipeline.errors import PipelineError, run_cli

METRICS_FILE = "outputs/eval/metrics.json"  # evaluate's headline metrics (dvc.yaml)
SORT_FOR_MONITOR = {"val/accuracy": "accuracy", "val/f1_macro": "f1_macro", "val/loss": "f1_macro"}
DEFAULT_DVC_ARGS = ["--all-branches"]
FINISHED = ("", "done", "success")  # baselines have no executor state; finished experiments "success" or none
MAX_NAME_CHARS = 24
GAP = "  "


def exp_show(dvc_args: list[str]) -> list[dict]:
    dvc = shutil.which("dvc")
    if dvc is None:
        raise PipelineError(
            "dvc: command not found. Activate the project's environment (make setup; . .venv/bin/activate)."
        )
    result = subprocess.run([dvc, "exp", "show", "--json", *dvc_args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PipelineError(f"dvc exp show failed: {result.stderr.strip() or result.stdout.strip()}")
    return json.loads(result.stdout)


def rows_of(shown: list[dict]) -> list[dict[str, Any]]:
    """One row per revision: its display name, state, flat params and headline metrics (None where missing)."""
    rows = []
    for baseline in shown:
        name = baseline["name"] or (baseline["rev"] if baseline["rev"] == "workspace" else baseline["rev"][:7])
        rows.append(row_of(name, "", baseline["data"]))
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            for revision in experiment["revs"]:
                name = revision["name"] or revision["rev"][:7]
                rows.append(row_of(name, executor.get("state") or "done", revision["data"]))
    return rows


def row_of(name: str, state: str, data: dict) -> dict[str, Any]:
    params = flatten((data.get("params") or {}).get(PARAMS_FILE, {}).get("data", {}))
    # A queued or running experiment has no metrics of its own yet (DVC may show the workspace's meanwhile).
    metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data", {}) if state in FINISHED else {}
    return {
        "name": name,
        "state": state,
        "params": params,
        "metrics": {key: metrics.get(key) for key in HEADLINE_METRICS},
    }


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def differing_params(rows: list[dict]) -> list[str]:
    """Keys (in params.yaml order) whose value is not the same in every row that has params."""
    with_params = [r["params"] for r in rows if r["params"]]
    keys = list(dict.fromkeys(k for params in with_params for k in params))
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in with_params}) > 1]


def sort_key_for(rows: list[dict]) -> str:
    monitors = {r["params"].get("train.monitor") for r in rows if r["params"]}
    return SORT_FOR_MONITOR.get(monitors.pop(), "f1_macro") if len(monitors) == 1 else "f1_macro"


def table(rows: list[dict], sort_by: str) -> str:
    keys = differing_params(rows)
    rows = sorted(rows, key=lambda r: (r["metrics"][sort_by] is None, -(r["metrics"][sort_by] or 0.0)))
    header = ["experiment", "state", *keys, *HEADLINE_METRICS]
    body = [
        [
            shorten(r["name"]),
            r["state"],
            *(param_cell(r["params"], k) for k in keys),
            *(metric_cell(r["metrics"][m]) for m in HEADLINE_METRICS),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    text_columns = 2 + len(keys)  # left-aligned; metrics right-aligned

    def line(values: list[str]) -> str:
        return GAP.join(
            v.ljust(w) if i < text_columns else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join(
        [
            line(header),
            *(line(values) for values in body),
            f"(sorted by {sort_by}, best first: test-split scores, for reading; choose settings on validation metrics)",
        ]
    )


def shorten(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


def param_cell(params: dict[str, Any], key: str) -> str:
    """As written in params.yaml: 0.01, [32,64], null."""
    if not params:
        return "-"
    return json.dumps(params.get(key), separators=(",", ":")).strip('"')


def metric_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sort-by",
        choices=HEADLINE_METRICS,
        default=None,
        help="headline metric to sort by (default: the one matching train.monitor)",
    )
    parser.add_argument(
        "dvc_args", nargs="*", help=f"arguments for `dvc exp show` after --; default {' '.join(DEFAULT_DVC_ARGS)}"
    )
    args = parser.parse_args()
    rows = rows_of(exp_show(args.dvc_args or DEFAULT_DVC_ARGS))
    print(table(rows, args.sort_by or sort_key_for(rows)))


if __name__ == "__main__":
    run_cli(main)
