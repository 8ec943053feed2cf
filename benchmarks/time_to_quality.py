"""Minutes to reach each metric target, per run, as a Markdown table.

    python benchmarks/time_to_quality.py runs/demo-a runs/demo-b [--evaluation holdout] [--targets 0.2 0.3]
    python benchmarks/time_to_quality.py runs/demo-a --held-out data/holdout_faint

Time to quality: minutes from a training command's start until its metric first reaches each
target, read from the runs' `log.jsonl` (`elapsed_seconds` on every line).

By default the metric is the validation's `best_rsna_metric`: the RSNA metric at the score
threshold best on that validation, the one by which training keeps its best weights. An
independent held-out figure (`metrics.json` of `retinanet evaluate`) can be shown beside it.
With `--held-out DIR` (a labelled set in the RSNA layout that no run trained on) every checkpoint
the run kept (`training.keep_checkpoints` as many as its validations) is evaluated on DIR at the
score threshold its validation had chosen then, so that the minutes are the yardstick's own;
the table adds the median IoU of the matched boxes at the best checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retinanet.errors import UserError
from retinanet import run_directory

TARGETS = (0.2, 0.3, 0.4, 0.5)
METRIC = "best_rsna_metric"


class TimeToQualityError(UserError, ValueError):
    """A run whose log cannot answer: missing, without validations, or without elapsed times."""


def validation_curve(run_dir) -> list[tuple[int, float, float]]:
    """[(step, minutes since the command started, best_rsna_metric)] of the run's validations."""
    run_dir = Path(run_dir)
    log = run_dir / run_directory.LOG
    entries = [entry for entry in run_directory.read_log(run_dir) if entry.get("split") == "validation"]
    if not entries:
        raise TimeToQualityError(f"{log}: no validation logged (is {run_dir} a run directory?)")
    if any("elapsed_seconds" not in entry for entry in entries):
        raise TimeToQualityError(f"{log}: validations without elapsed_seconds (a run logged before training "
                                 "recorded its elapsed time)")
    return [(int(entry["step"]), entry["elapsed_seconds"] / 60, float(entry[METRIC])) for entry in entries]


def held_out_curve(run_dir, data_dir) -> tuple[list[tuple[int, float, float]], dict]:
    """[(step, minutes, RSNA metric on `data_dir`)] of every checkpoint the run kept, each at the
    threshold its validation chose then (written to <run>/held_out/step-<N>/), and {step: median
    matched IoU}."""
    import tensorflow as tf

    from retinanet.evaluate.evaluation import evaluate_run

    run_dir = Path(run_dir)
    validations = {int(entry["step"]): entry for entry in run_directory.read_log(run_dir)
                   if entry.get("split") == "validation"}
    state = tf.train.get_checkpoint_state(str(run_dir / run_directory.CHECKPOINTS))
    prefixes = list(state.all_model_checkpoint_paths) if state else []
    curve, matched_iou = [], {}
    for prefix in prefixes:
        step = int(prefix.rsplit("-", 1)[1])
        if step not in validations:
            continue
        entry = validations[step]
        metrics = evaluate_run(output_dir=run_dir / "held_out" / f"step-{step}", checkpoint=prefix,
                               config_path=run_dir / run_directory.CONFIG_FILE, data_root=data_dir,
                               threshold=float(entry["best_threshold"]), progress=False)
        curve.append((step, entry["elapsed_seconds"] / 60, float(metrics["rsna_metric"])))
        quartiles = metrics["localization"]["matched_iou"]
        matched_iou[step] = None if quartiles is None else quartiles[1]
    if not curve:
        raise TimeToQualityError(f"{run_dir}: no checkpoint of a validation step to evaluate (keep more with "
                                 "training.keep_checkpoints)")
    return sorted(curve), matched_iou


def summarize(run_dir, targets=TARGETS, evaluation: str | None = None, held_out_data=None) -> dict:
    """{"run", "minutes": {target: first minutes reaching it, or None}, "best", "best_step",
    "best_minutes", "last_minutes", "held_out": rsna_metric of <run>/<evaluation>/metrics.json or None,
    "on_held_out": whether the curve is `held_out_data`'s, "matched_iou": median matched IoU at the best
    step (with `held_out_data`; None where no box matched)}."""
    matched_iou = None
    if held_out_data is not None:
        curve, ious = held_out_curve(run_dir, held_out_data)
    else:
        curve = validation_curve(run_dir)
    best_step, best_minutes, best = max(curve, key=lambda point: point[2])
    if held_out_data is not None:
        matched_iou = ious[best_step]
    held_out = None
    if evaluation:
        path = Path(run_dir) / evaluation / "metrics.json"
        if not path.is_file():
            raise TimeToQualityError(f"{path}: missing (run `retinanet evaluate --output {path.parent}` first)")
        held_out = float(json.loads(path.read_text())["rsna_metric"])
    return {"run": Path(run_dir).name,
            "minutes": {target: next((minutes for _, minutes, value in curve if value >= target), None)
                        for target in targets},
            "best": best, "best_step": best_step, "best_minutes": best_minutes, "last_minutes": curve[-1][1],
            "held_out": held_out, "on_held_out": held_out_data is not None, "matched_iou": matched_iou}


def format_table(summaries: list[dict], targets=TARGETS) -> str:
    """A Markdown table: one row per run, minutes to each target ('-': not reached)."""
    held_out = any(summary["held_out"] is not None for summary in summaries)
    matched = any(summary["on_held_out"] for summary in summaries)
    header = ["run", *(f"min to {target:g}" for target in targets),
              f"best {'held-out' if matched else 'validation'} (step, min)", *(["held-out"] if held_out else []),
              *(["median matched IoU"] if matched else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        cells = [summary["run"],
                 *("-" if summary["minutes"][target] is None else f"{summary['minutes'][target]:.1f}"
                   for target in targets),
                 f"{summary['best']:.3f} ({summary['best_step']}, {summary['best_minutes']:.1f})"]
        if held_out:
            cells.append("-" if summary["held_out"] is None else f"{summary['held_out']:.3f}")
        if matched:
            cells.append("-" if summary["matched_iou"] is None else f"{summary['matched_iou']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories written by `retinanet train`")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="metric targets")
    parser.add_argument("--evaluation", help="a folder in each run holding `retinanet evaluate`'s metrics.json, "
                                             "shown as the held-out column")
    parser.add_argument("--held-out", metavar="DIR", help="a labelled set no run trained on: the minutes are those "
                                                          "of its metric, each kept checkpoint evaluated on it")
    args = parser.parse_args(argv)
    try:
        summaries = [summarize(run_dir, args.targets, args.evaluation, args.held_out) for run_dir in args.run_dirs]
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(summaries, args.targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
