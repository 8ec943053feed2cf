"""Train a RetinaNet from a YAML config.

    retinanet train --config configs/demo.yaml
    retinanet train --config configs/demo.yaml --set training.steps=1     # a smoke run
    retinanet train --resume --run-dir runs/demo-...                      # continue a killed run
"""

from __future__ import annotations

from retinanet.commands.common import add_config_arguments, add_progress_argument, report_error


def add_arguments(parser) -> None:
    add_config_arguments(parser, required=False)
    parser.add_argument("--run-dir", help="run directory (default: <training.run_root>/<config>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in --run-dir and start afresh (a new run never mixes with it)")
    add_progress_argument(parser)


def run(args, parser) -> int:
    if args.resume and not args.run_dir:
        parser.error("--resume needs --run-dir")
    if not args.resume and not args.config:
        parser.error("--config is required")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --run-dir and --overwrite deletes it: give one of them")
    if args.resume and (args.config or args.set):
        given = " and ".join(option for option, value in (("--config", args.config), ("--set", args.set)) if value)
        parser.error(f"--resume continues the run with the config saved in {args.run_dir}/config.yaml, so {given} "
                     f"would be ignored: resume without {given}, or train with other settings as a new run "
                     "(--config ... --set ... with another --run-dir)")
    from pathlib import Path

    from retinanet.config import ConfigError, load_config

    try:
        # Before TensorFlow loads (seconds): a config error is reported at once.
        config = None if args.resume else load_config(args.config, args.set)
        if config is not None and config.training.strategy == "multi_worker" and not args.run_dir:
            # Each worker would name its own directory after the time it started.
            raise ConfigError("training.strategy: multi_worker needs --run-dir (the same on every worker)")
    except ConfigError as error:
        return report_error(error)

    from retinanet.data.dicom import DicomReadError
    from retinanet.data.rsna import LabelError
    from retinanet.model.backbone import WeightsError
    from retinanet.runs import BEST_WEIGHTS, TENSORBOARD, VALIDATION_PICTURE, read_best_record
    from retinanet.training import TrainingError, default_run_dir, train

    try:
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config, args.config)
        results = train(config, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except (ConfigError, LabelError, DicomReadError, WeightsError, TrainingError) as error:
        return report_error(error)
    if not results["scalars"]:
        print(f"Worker finished at step {results['step']}; the chief wrote the run directory {run_dir}")
        return 0
    print(f"\nHeld-out validation at step {results['step']}:")
    for key, value in results["scalars"].items():
        print(f"  {key:22s} {value:.4f}")
    best = read_best_record(run_dir)
    print(f"\nRun directory:    {run_dir}")
    print(f"Best weights:     {run_dir / BEST_WEIGHTS} (step {best['step']}: RSNA metric "
          f"{best['best_rsna_metric']:.4f} at the score threshold chosen on validation, {best['best_threshold']:.2f}; "
          f"{best['rsna_metric']:.4f} at the configured one)")
    print(f"Predictions:      {run_dir / VALIDATION_PICTURE}")
    print(f"TensorBoard:      tensorboard --logdir {run_dir / TENSORBOARD}")
    print(f"Evaluate:         retinanet evaluate --run-dir {run_dir} --output {run_dir / 'evaluation'}")
    return 0
