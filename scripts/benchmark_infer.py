"""Time inference from a 1024 px DICOM file to boxes, by stage, for the Keras model and the SavedModel.

    python scripts/benchmark_infer.py                      # configs/rsna.yaml, random weights
    python scripts/benchmark_infer.py --run-dir runs/x     # a trained run
    python scripts/benchmark_infer.py --dicom some.dcm --repeats 20
    python scripts/benchmark_infer.py --run-dir runs/x --directory dicoms/ [--batch-size 8]
    python scripts/benchmark_infer.py --images 64          # `infer` on 64 synthetic 1024 px DICOMs

Prints the median over warm runs of reading, preprocessing, network and post-processing; with
--directory or --images, the images per second of `retinanet infer` on a directory instead.
"""

from __future__ import annotations

import argparse
import sys

from retinanet.bench.benchmark import run_benchmark, run_directory_benchmark
from retinanet.config import ConfigError
from retinanet.data.dicom import DicomReadError
from retinanet.serve.inference import InputError, ModelLoadError
from retinanet.serve.journal import JournalError


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
    parser.add_argument("--directory", help="time `infer` on this directory of DICOMs")
    parser.add_argument("--images", type=int,
                        help="time `infer` on this many synthetic 1024 px DICOMs (without --directory)")
    parser.add_argument("--batch-size", type=int, help="with --directory or --images: images per batch "
                        "(default: evaluation.batch_size)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1")
    if (args.images is not None and args.images < 1) or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--images and --batch-size must be at least 1")
    try:
        if args.directory is not None or args.images is not None:
            report = run_directory_benchmark(config_path=args.config, run_dir=args.run_dir,
                                             checkpoint=args.checkpoint, directory=args.directory,
                                             num_images=args.images or 32, batch_size=args.batch_size,
                                             overrides=args.set)
        else:
            report = run_benchmark(config_path=args.config, run_dir=args.run_dir, checkpoint=args.checkpoint,
                                   dicom=args.dicom, repeats=args.repeats, warmup=args.warmup, overrides=args.set)
    except (ConfigError, DicomReadError, InputError, JournalError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
