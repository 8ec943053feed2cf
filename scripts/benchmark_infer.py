"""Time inference from a 1024 px DICOM file to boxes, by stage, for the Keras model and the SavedModel.

    python scripts/benchmark_infer.py                      # configs/rsna.yaml, random weights
    python scripts/benchmark_infer.py --run-dir runs/x     # a trained run
    python scripts/benchmark_infer.py --dicom some.dcm --repeats 20

Prints the median over warm runs of reading, preprocessing, network and post-processing.
"""

from __future__ import annotations

import argparse
import sys

from retinanet.bench.benchmark import run_benchmark
from retinanet.config import ConfigError
from retinanet.data.dicom import DicomReadError
from retinanet.serve.inference import InputError, ModelLoadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", default="configs/rsna.yaml", help="config of a randomly initialised model")
    source.add_argument("--run-dir", help="a trained run directory")
    source.add_argument("--checkpoint", help="a .weights.h5 file of a run")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a --config value (repeatable)")
    parser.add_argument("--dicom", help="DICOM file to time (default: a synthetic 1024 px one)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per path (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1")
    try:
        report = run_benchmark(config_path=args.config, run_dir=args.run_dir, checkpoint=args.checkpoint,
                               dicom=args.dicom, repeats=args.repeats, warmup=args.warmup, overrides=args.set)
    except (ConfigError, DicomReadError, InputError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
