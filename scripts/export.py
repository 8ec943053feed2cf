"""Export a trained run as a TensorFlow SavedModel (one uint8 grey image of any size -> boxes).

    python scripts/export.py --run-dir runs/demo-... --output exported/
    python scripts/export.py --checkpoint runs/x/best.weights.h5 --output exported/ [--config CFG]

Load it anywhere with tf.saved_model.load alone; see retinanet/export.py for the signature
and the CLAHE step the caller applies first when the run used CLAHE.
"""

from __future__ import annotations

import argparse
import json
import sys

from retinanet.config import ConfigError
from retinanet.export import export_saved_model
from retinanet.inference import InputError, ModelLoadError, add_source_arguments, check_source_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_arguments(parser)
    parser.add_argument("--output", required=True, help="SavedModel directory to write")
    parser.add_argument("--threshold", type=float, help="score threshold baked in (default: the run's chosen one)")
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)
    try:
        info = export_saved_model(output_dir=args.output, checkpoint=args.checkpoint, run_dir=args.run_dir,
                                  config_path=args.config, threshold=args.threshold)
    except (ConfigError, InputError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    print(f"SavedModel written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
