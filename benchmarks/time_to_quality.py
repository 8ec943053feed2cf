"""Minutes to reach each validation metric target, per run, as a Markdown table.

    python benchmarks/time_to_quality.py runs/demo-a runs/demo-b [--evaluation holdout] [--targets 0.2 0.3]

Time to quality: minutes from a training command's start until its validation metric first
reaches each target, read from the runs' `log.jsonl` (`elapsed_seconds` on every line).

The metric is `best_rsna_metric`: the RSNA metric at the score threshold best on that
validation, the one by which training keeps its best weights. An independent held-out figure
(`metrics.json` of `retinanet evaluate`) can be shown beside it.
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


def summarize(run_dir, targets=TARGETS, evaluation: str | None = None) -> dict:
    """{"run", "minutes": {target: first minutes reaching it, or None}, "best", "best_step",
    "best_minutes", "last_minutes", "held_out": rsna_metric of <run>/<evaluation>/metrics.json or None}."""
    curve = validation_curve(run_dir)
    best_step, best_minutes, best = max(curve, key=lambda point: point[2])
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
            "held_out": held_out}


def format_table(summaries: list[dict], targets=TARGETS) -> str:
    """A Markdown table: one row per run, minutes to each target ('-': not reached)."""
    held_out = any(summary["held_out"] is not None for summary in summaries)
    header = ["run", *(f"min to {target:g}" for target in targets), "best validation (step, min)",
              *(["held-out"] if held_out else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        cells = [summary["run"],
                 *("-" if summary["minutes"][target] is None else f"{summary['minutes'][target]:.1f}"
                   for target in targets),
                 f"{summary['best']:.3f} ({summary['best_step']}, {summary['best_minutes']:.1f})"]
        if held_out:
            cells.append("-" if summary["held_out"] is None else f"{summary['held_out']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories written by `retinanet train`")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="metric targets")
    parser.add_argument("--evaluation", help="a folder in each run holding `retinanet evaluate`'s metrics.json, "
                                             "shown as the held-out column")
    args = parser.parse_args(argv)
    try:
        summaries = [summarize(run_dir, args.targets, args.evaluation) for run_dir in args.run_dirs]
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(summaries, args.targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
