"""Validate the labels, fix the split and build the preprocessed image cache for a config.

python scripts/prepare_data.py --config configs/rsna.yaml

Training builds the cache on its own when it is missing; running this first separates the
one-off cost (decoding every DICOM, CLAHE, resizing) from training and reports bad files.
"""

from __future__ import annotations

import argparse
import sys

from retinanet.config import ConfigError, load_config
from retinanet.data.dicom import DicomReadError
from retinanet.data.rsna import LabelError
from retinanet.data.pipeline import prepare_split, source_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        prepared = prepare_split(config)
        for name, records in (("train", prepared.train), ("validation", prepared.validation)):
            _, used, _ = source_dataset(config, records, split=name)
            positives = sum(r.target for r in used)
            print(f"{name:10s} {len(used):6d} images ({positives} with boxes, "
                  f"{sum(len(r.boxes) for r in used)} boxes); {len(records) - len(used)} unreadable skipped")
    except (ConfigError, LabelError, DicomReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"split file: {prepared.split_file}")
    if config.data.use_cache:
        print(f"cache:      {config.data.cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
