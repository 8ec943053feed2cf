"""Validate the labels, fix the split and build the preprocessed image cache for a config.

    retinanet prepare --config configs/rsna.yaml

The split is stratified by Target and, with `data.headers_csv` or the DICOMs' headers, by view
position (AP/PA); an existing split file is kept as it is.

Training builds the cache on its own when it is missing; running this first separates the
one-off cost (decoding every DICOM, CLAHE, resizing) from training and reports bad files.
"""

from __future__ import annotations

from retinanet.commands.common import add_config_arguments, add_progress_argument


def add_arguments(parser) -> None:
    add_config_arguments(parser)
    add_progress_argument(parser)


def run(args, parser) -> int:
    from retinanet.config import load_config
    from retinanet.builders import build_image_source
    from retinanet.data.split import prepare_split
    from retinanet.synthetic.rsna_layout import ensure_synthetic_data

    progress = not args.no_progress
    config = load_config(args.config, args.set)
    ensure_synthetic_data(config, progress)  # the demo's data, on its first run
    prepared = prepare_split(config, progress=progress)
    for name, records in (("train", prepared.train), ("validation", prepared.validation)):
        used = build_image_source(config, records, progress=progress, split=name).records
        positives = sum(r.target for r in used)
        print(f"{name:10s} {len(used):6d} images ({positives} with boxes, "
              f"{sum(len(r.boxes) for r in used)} boxes); {len(records) - len(used)} unreadable skipped")
    print(f"split file: {prepared.split_file} (stratified by Target"
          f"{' and ViewPosition' if prepared.by_view_position else ' only'})")
    if config.data.headers_csv and not prepared.by_view_position:
        print("            made before data.headers_csv was set: delete it to stratify by view position too")
    if config.data.use_cache:
        print(f"cache:      {config.data.cache_dir}")
    return 0
