"""Evaluate a trained run on its held-out split: metrics.json, predictions CSV, plots, overlays.

    retinanet evaluate --run-dir runs/demo-... --output runs/demo-.../evaluation [--write-threshold]
    retinanet evaluate --checkpoint runs/x/best.weights.h5 --output eval [--config CFG] [--split FILE]
    retinanet evaluate --run-dir runs/a --run-dir runs/b --output eval [--split FILE]  # an ensemble
    retinanet evaluate --run-dir runs/demo-cv --data data/other --output eval  # another labelled set

The split defaults to the run's saved split file. The metric, predictions.csv and the first
row of the report are at the run's score threshold (its threshold.json: chosen on validation by
training, or by an earlier --write-threshold; else evaluation.score_threshold), printed with
where it came from (--threshold sets another); the best threshold of the sweep is reported
beside it, and --write-threshold makes it the run's. Exit code 2 on a missing run, checkpoint,
config or split file, or unreadable data. An ensemble (several --run-dir, or a cross-validation
directory) is evaluated on the first run's held-out fold of --split, which must hold no patient
any of its runs trained on (a cross-validation's folds trained on each other's: give a split of
patients none of them saw, or --data: a labelled data set none of them saw). Evaluating patients
a model trained on (by its run's split.csv) is refused. `--set postprocessing.KEY=VALUE` (or
evaluation.*) tries another post-processing on the same weights, e.g. box voting.
"""

from __future__ import annotations

from retinanet.commands.common import add_progress_argument, add_source_arguments, check_source_arguments


def add_arguments(parser) -> None:
    add_source_arguments(parser)
    evaluated = parser.add_mutually_exclusive_group()
    evaluated.add_argument("--split", help="split file patientId,Target,fold (default: the run's split.csv)")
    evaluated.add_argument("--data", metavar="DIR",
                           help="evaluate every patient of another labelled data set in the RSNA layout (the "
                                "config's label and class CSVs and image folder under DIR) instead of the held-out "
                                "fold")
    parser.add_argument("--output", required=True, help="directory for metrics.json, predictions.csv and plots")
    parser.add_argument("--threshold", type=float,
                        help="score threshold of the metric and predictions.csv (default: the run's chosen one)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="try another post-processing or evaluation setting without training again, e.g. "
                             "--set postprocessing.box_voting_iou=0.55 (repeatable; postprocessing.* and "
                             "evaluation.* only: the weights fix the rest)")
    parser.add_argument("--write-threshold", action="store_true",
                        help="write the best threshold to <run_dir>/threshold.json (replacing the one training "
                             "chose on validation) for inference, export and later evaluations")
    add_progress_argument(parser)


def run(args, parser) -> int:
    check_source_arguments(parser, args)
    if args.set and args.write_threshold:
        parser.error("--write-threshold goes without --set: the run's threshold must fit the run's own settings")
    from retinanet.evaluate.evaluation import evaluate_run, format_report

    metrics = evaluate_run(output_dir=args.output, run_dir=args.run_dir, checkpoint=args.checkpoint,
                           config_path=args.config, split_file=args.split, data_root=args.data,
                           threshold=args.threshold, write_threshold=args.write_threshold,
                           progress=not args.no_progress, overrides=args.set)
    print(format_report(metrics))
    return 0
