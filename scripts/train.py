"""Train a RetinaNet from a YAML config: python scripts/train.py --config configs/demo.yaml"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retinanet.config import ConfigError, load_config
from retinanet.data.dicom import DicomReadError
from retinanet.data.rsna import LabelError
from retinanet.model.backbone import WeightsError
from retinanet.training import TrainingError, default_run_dir, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML experiment config (not needed with --resume)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set training.steps=100 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (default: <training.run_root>/<config>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in --run-dir and start afresh (a new run never mixes with it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.resume and not args.run_dir:
        parser.error("--resume needs --run-dir")
    if not args.resume and not args.config:
        parser.error("--config is required")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --run-dir and --overwrite deletes it: give one of them")
    try:
        config = None if args.resume else load_config(args.config, args.set)
        if config is not None and config.training.strategy == "multi_worker" and not args.run_dir:
            # Each worker would name its own directory after the time it started.
            raise ConfigError("training.strategy: multi_worker needs --run-dir (the same on every worker)")
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config, args.config)
        results = train(config, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except (ConfigError, LabelError, DicomReadError, WeightsError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not results["scalars"]:
        print(f"Worker finished at step {results['step']}; the chief wrote the run directory {run_dir}")
        return 0
    print(f"\nHeld-out validation at step {results['step']}:")
    for key, value in results["scalars"].items():
        print(f"  {key:22s} {value:.4f}")
    best = json.loads((run_dir / "best.json").read_text())
    print(f"\nRun directory:    {run_dir}")
    print(f"Best weights:     {run_dir / 'best.weights.h5'} (step {best['step']}: RSNA metric "
          f"{best['best_rsna_metric']:.4f} at the score threshold chosen on validation, {best['best_threshold']:.2f}; "
          f"{best['rsna_metric']:.4f} at the configured one)")
    print(f"Predictions:      {run_dir / 'validation_predictions.png'}")
    print(f"TensorBoard:      tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"Evaluate:         python scripts/evaluate.py --run-dir {run_dir} --output {run_dir / 'evaluation'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
