"""Peak memory of a 1000-class evaluate (metrics + confusion figure) and of a 2M-line text predict.

    python bench/memory_bounds.py [--classes 1000] [--samples 50000] [--lines 2000000] [--model cnn]
                                  [--only evaluate|predict]

Each measurement runs in a fresh Python process, started by a bare launcher that reports the child's peak resident
set size (`getrusage(RUSAGE_CHILDREN).ru_maxrss`), and is set beside a reference measured the same way in the same
run, so the ratio shows whether memory grows with the input:

- evaluate: `pipeline.evaluation.metrics.evaluate_predictions` and `confusion_figure` (saved as evaluate saves
  it, PNG at 120 dpi) on synthetic labels, `--samples` test samples over `--classes` classes (70 % predicted right,
  the rest uniformly wrong). Reference: the same with 10 classes.
- predict: `python -m pipeline.stages.predict --input lines.txt --out predictions.csv` with a text model (`--model`,
  with the schema's default settings of that family and random weights: memory does not depend on them) and a vocabulary
  prepared from the first 600 lines of the SMS Spam Collection; the input is `--lines` messages of that corpus cut to
  14 characters (about 15 bytes a line, as in the 30 MB / 2M-line file of the report this bench answers).
  Reference: the first 1 % of those lines.

Bounds checked: each peak below BOUND_MB, and each peak at most BOUND_RATIO times its reference.
Everything is written into a temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"
BOUND_MB = 1024.0
BOUND_RATIO = 2.0
REFERENCE_CLASSES = 10
REFERENCE_SHARE = 0.01
LINE_CHARS = 14
VOCAB_LINES = 600

# The child's peak RSS, read by a bare interpreter that started it and nothing else: a child's ru_maxrss starts at
# the peak of the process that spawned it, and this script is larger than a bare launcher.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("ru_maxrss_children_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(code)
"""

EVALUATE_CHILD = """
import numpy as np, matplotlib.pyplot as plt
from pipeline.evaluation.metrics import confusion_figure, evaluate_predictions
rng = np.random.default_rng(0)
y_true = rng.integers(0, {classes}, {samples})
y_pred = np.where(rng.random({samples}) < 0.7, y_true, rng.integers(0, {classes}, {samples}))
names = [f"class_{{i}}" for i in range({classes})]
evaluation = evaluate_predictions(y_true, y_pred, names)
fig = confusion_figure(evaluation, names)
fig.savefig("confusion_matrix.png", dpi=120, bbox_inches="tight")
plt.close(fig)
"""

MODEL_CHILD = """
import sys
from pathlib import Path
import dataclasses
from pipeline.config import DataParams, ModelParams, TextParams
from pipeline.stages.prepare import prepare
from pipeline.training.trained_model import save_trained_model
from models.registry import build_model
meta = prepare(DataParams(dataset=sys.argv[1], kind="text", text=TextParams()), Path("prepared"))
name = sys.argv[2]
hparams = dataclasses.asdict(getattr(ModelParams(), name))
net = build_model(name, hparams, meta["input_shape"], meta["num_classes"], meta["vocab_size"])
Path("model").mkdir()
save_trained_model(Path("model/model.pt"), net, name, hparams, meta)
"""


def run_child(args: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `python *args` in `cwd`."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    env.pop("DVC_ROOT", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    tag, kib = done.stdout.strip().splitlines()[-1].split()
    assert tag == "ru_maxrss_children_kib", done.stdout[-500:]
    return wall, int(kib) / 1024


def measure_evaluate(folder: Path, classes: int, samples: int) -> dict:
    ref_wall, ref_mb = run_child(["-c", EVALUATE_CHILD.format(classes=REFERENCE_CLASSES, samples=samples)], folder)
    wall, peak_mb = run_child(["-c", EVALUATE_CHILD.format(classes=classes, samples=samples)], folder)
    return {
        "what": f"evaluate, {classes} classes, {samples} samples",
        "reference": f"{REFERENCE_CLASSES} classes",
        "wall": wall,
        "peak_mb": peak_mb,
        "ref_wall": ref_wall,
        "ref_mb": ref_mb,
    }


def measure_predict(folder: Path, sms: Path, lines: int, model: str) -> dict:
    corpus = [line.split("\t", 1)[1] for line in sms.read_text(encoding="utf-8").splitlines() if "\t" in line]
    (folder / "train.tsv").write_text(
        "\n".join(sms.read_text(encoding="utf-8").splitlines()[:VOCAB_LINES]) + "\n", encoding="utf-8"
    )
    run_child(["-c", MODEL_CHILD, "train.tsv", model], folder)
    picked = np.random.default_rng(0).integers(0, len(corpus), size=lines)
    messages = [corpus[i][:LINE_CHARS].strip() or "ok" for i in picked]
    reference_lines = max(1, int(lines * REFERENCE_SHARE))
    (folder / "lines.txt").write_text("\n".join(messages) + "\n", encoding="utf-8")
    (folder / "reference.txt").write_text("\n".join(messages[:reference_lines]) + "\n", encoding="utf-8")
    del messages, picked
    command = ["-m", "pipeline.stages.predict", "--prepared", "prepared", "--model", "model", "--out"]
    ref_wall, ref_mb = run_child([*command, "ref.csv", "--input", "reference.txt"], folder)
    wall, peak_mb = run_child([*command, "predictions.csv", "--input", "lines.txt"], folder)
    with open(folder / "predictions.csv", encoding="utf-8") as f:
        rows = sum(1 for _ in f) - 1
    assert rows == lines, (rows, lines)
    size_mb = (folder / "lines.txt").stat().st_size / 2**20
    return {
        "what": f"predict, {model}, {lines} lines ({size_mb:.1f} MB)",
        "reference": f"{reference_lines} lines",
        "wall": wall,
        "peak_mb": peak_mb,
        "ref_wall": ref_wall,
        "ref_mb": ref_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--model", choices=["mlp", "cnn", "rnn", "transformer"], default="cnn")
    parser.add_argument("--only", choices=["evaluate", "predict"])
    parser.add_argument("--sms", type=Path, default=DEFAULT_SMS)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="memory_bounds_") as tmp:
        if args.only in (None, "evaluate"):
            results.append(measure_evaluate(Path(tmp), args.classes, args.samples))
        if args.only in (None, "predict"):
            folder = Path(tmp) / "predict"
            folder.mkdir()
            results.append(measure_predict(folder, args.sms, args.lines, args.model))

    print(f"bounds: peak <= {BOUND_MB:.0f} MB and peak <= {BOUND_RATIO} x the reference's peak")
    print(
        f"{'measurement':<42} {'seconds':>8} {'peak MB':>8} | {'reference':<14} {'seconds':>8} {'peak MB':>8} "
        f"{'ratio':>6}  within"
    )
    failed = False
    for r in results:
        ratio = r["peak_mb"] / r["ref_mb"]
        ok = r["peak_mb"] <= BOUND_MB and ratio <= BOUND_RATIO
        failed |= not ok
        print(
            f"{r['what']:<42} {r['wall']:8.1f} {r['peak_mb']:8.0f} | {r['reference']:<14} {r['ref_wall']:8.1f} "
            f"{r['ref_mb']:8.0f} {ratio:6.2f}  {'yes' if ok else 'NO'}"
        )
    print(json.dumps(results))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
