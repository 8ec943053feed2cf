"""Evaluate a trained run on its held-out split: metrics.json, predictions CSV, plots, overlays.

    python scripts/evaluate.py --run-dir runs/demo-... --output runs/demo-.../evaluation
    python scripts/evaluate.py --checkpoint runs/x/best.weights.h5 --output eval [--config CFG] [--split FILE]

The split defaults to the run's saved split file. Exit code 2 on a missing run, checkpoint,
config or split file, or unreadable data.
"""

from __future__ import annotations

import argparse
import sys

from retinanet.config import ConfigError
from retinanet.data.dicom import DicomReadError
from retinanet.data.rsna import LabelError
from retinanet.evaluation import EvaluationError, evaluate_run, format_report
from retinanet.inference import InputError, ModelLoadError, add_source_arguments, check_source_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_arguments(parser)
    parser.add_argument("--split", help="split file patientId,Target,fold (default: the run's split.csv)")
    parser.add_argument("--output", required=True, help="directory for metrics.json, predictions.csv and plots")
    parser.add_argument("--write-threshold", action="store_true",
                        help="write the best threshold to <run_dir>/threshold.json for inference")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)
    try:
        metrics = evaluate_run(output_dir=args.output, run_dir=args.run_dir, checkpoint=args.checkpoint,
                               config_path=args.config, split_file=args.split, write_threshold=args.write_threshold,
                               progress=not args.no_progress)
    except (ConfigError, LabelError, DicomReadError, ModelLoadError, InputError, EvaluationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
