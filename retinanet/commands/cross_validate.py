"""K-fold cross-validation: one run per fold, out-of-fold predictions, metric and threshold.

    retinanet cross-validate --config configs/demo.yaml [--folds 0,1,2,3,4] [--out runs/demo-cv]

Each fold is a normal run directory `<out>/fold_<k>` trained with data.validation_fold k on the
same split file; running the command again skips finished folds and resumes a stopped one.
Then every fold's best weights predict its held-out patients, and `<out>` receives the
out-of-fold predictions, metric (per fold, and with a 95% bootstrap interval), the threshold
chosen on them (threshold.json), a summary table and a plot. training.time_budget_minutes
applies to each fold. Exit code 2 on a bad config, --folds or data, naming the fold.
"""

from __future__ import annotations

from retinanet.commands.common import add_config_arguments, add_progress_argument


def add_arguments(parser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--folds", metavar="0,1,2,3,4",
                        help="the folds to train and pool, comma-separated (default: all data.num_folds)")
    parser.add_argument("--out", metavar="DIR",
                        help="parent directory of the fold runs (default: <training.run_root>/<config name>-cv, "
                             "so that running again resumes)")
    add_progress_argument(parser)


def run(args, parser) -> int:
    from pathlib import Path

    from retinanet.config import ConfigError, load_config
    from retinanet.experiments.cross_validation import cross_validate, default_parent, format_report, parse_folds

    config = load_config(args.config, args.set)
    if config.training.strategy == "multi_worker":
        raise ConfigError("training.strategy: multi_worker is not supported by cross-validation "
                          "(train each fold with `retinanet train` on the workers instead)")
    folds = parse_folds(args.folds, config.data.num_folds)
    parent = Path(args.out) if args.out else default_parent(config, args.config)
    from retinanet.synthetic.rsna_layout import ensure_synthetic_data

    ensure_synthetic_data(config, progress=not args.no_progress)  # the demo's data, on its first run
    analysis = cross_validate(config, parent, folds, progress=not args.no_progress)
    print()
    print(format_report(analysis))
    return 0
