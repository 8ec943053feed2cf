"""Train a RetinaNet from a YAML config.

    retinanet train --config configs/demo.yaml
    retinanet train --config configs/demo.yaml --set training.steps=1     # a smoke run
    retinanet train --resume --run-dir runs/demo-...                      # continue a killed run
"""

from __future__ import annotations

from retinanet.commands.common import add_config_arguments, add_progress_argument


def add_arguments(parser) -> None:
    add_config_arguments(parser, required=False)
    parser.add_argument("--run-dir", help="run directory (default: <training.run_root>/<config>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its latest checkpoint")
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
    import time
    from pathlib import Path

    from retinanet.config import ConfigError, load_config

    # Before TensorFlow loads (seconds): a config error is reported at once.
    config = None if args.resume else load_config(args.config, args.set)
    if config is not None and config.training.strategy == "multi_worker" and not args.run_dir:
        # Each worker would name its own directory after the time it started.
        raise ConfigError("training.strategy: multi_worker needs --run-dir (the same on every worker)")

    from retinanet.run_directory import (BEST_WEIGHTS, CONFIG_FILE, TENSORBOARD, VALIDATION_PICTURE, load_run_config,
                                         read_best_record, read_threshold)
    from retinanet.train.trainer import default_run_dir, train

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config, args.config)
    started = time.monotonic()  # the time budget counts the data's generation too
    if config is not None:
        from retinanet.synthetic.rsna_layout import ensure_synthetic_data

        ensure_synthetic_data(config, progress=not args.no_progress)  # the demo's data, on its first run
    results = train(config, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                    started=started)
    if not results["scalars"]:
        print(f"Worker finished at step {results['step']}; the chief wrote the run directory {run_dir}")
        return 0
    configured = load_run_config(run_dir / CONFIG_FILE).evaluation.score_threshold
    print(f"\nHeld-out validation at step {results['step']}:")
    for key, value in results["scalars"].items():
        print(f"  {key:22s} {value:.4f}")
    print(f"  (rsna_metric at score threshold {configured:g} (config evaluation.score_threshold); "
          "best_rsna_metric at best_threshold, chosen on this validation)")
    best = read_best_record(run_dir)
    threshold, origin = read_threshold(run_dir, configured)
    print(f"\nRun directory:    {run_dir}")
    print(f"Best weights:     {run_dir / BEST_WEIGHTS} (step {best['step']}: RSNA metric "
          f"{best['best_rsna_metric']:.4f} at the score threshold chosen on validation, {best['best_threshold']:.2f}; "
          f"{best['rsna_metric']:.4f} at the configured one)")
    print(f"Score threshold:  {threshold:g} ({origin}); infer, evaluate and export use it")
    print(f"Predictions:      {run_dir / VALIDATION_PICTURE} (weights of step {results['step']}, score threshold "
          f"{results['overlay_threshold']:g}, {results['overlay_threshold_origin']})")
    print(f"TensorBoard:      tensorboard --logdir {run_dir / TENSORBOARD}")
    print(f"Evaluate:         retinanet evaluate --run-dir {run_dir} --output {run_dir / 'evaluation'}")
    return 0
