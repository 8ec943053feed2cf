"""The records a run trains and validates on: the labels read and validated, the patient-level
folds fixed in a split file (created on first use, stratified by Target and view position).

`prepare_split(config)` is the one entry; skipped label rows are counted and listed under
`data.bad_file_policy: skip` (`report_skips`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retinanet.config import Config
from retinanet.data.rsna import Record, SkipReport, load_or_create_folds, read_labels, split_records
from retinanet.data.views import VIEW_COLUMN, read_view_positions, view_positions_from_images
from retinanet.runtime.safe_writes import make_directory


@dataclass(frozen=True)
class PreparedSplit:
    train: list[Record]
    validation: list[Record]
    split_file: Path
    skipped: SkipReport
    by_view_position: bool = False  # the split file's strata are (Target, ViewPosition), not Target alone


def data_root(config: Config) -> Path:
    return Path(config.data.root)


def default_split_file(config: Config) -> Path:
    data = config.data
    if data.split_file:
        return Path(data.split_file)
    return data_root(config) / "splits" / f"folds{data.num_folds}_seed{data.split_seed}.csv"


def class_info_file(config: Config, root: Path) -> Path | None:
    """`data.class_info_csv` under `root`, or None when it is "" or absent (the class info is optional)."""
    if not config.data.class_info_csv:
        return None
    path = root / config.data.class_info_csv
    return path if path.is_file() else None


def read_data_set(config: Config, root: Path, skipped_list: Path,
                  require_images: bool = True) -> tuple[list[Record], SkipReport]:
    """The validated records of the RSNA-layout data set at `root` (the config's CSV and image
    folder names); patients skipped under data.bad_file_policy are counted and listed in `skipped_list`.
    `require_images=False` reads the labels without checking that the images exist."""
    data = config.data
    records, skipped = read_labels(root / data.labels_csv, root / data.train_images,
                                   class_info_csv=class_info_file(config, root), image_size=data.original_size,
                                   policy=data.bad_file_policy, require_images=require_images)
    report_skips(skipped, "label row(s) or patient(s)", skipped_list)
    return records, skipped


def split_view_positions(config: Config, root: Path, records: list[Record]) -> dict[str, str] | None:
    """The view positions a new split is stratified by: from `data.headers_csv`, else from the DICOM
    headers when every image is there, else None (Target only)."""
    data = config.data
    if data.headers_csv:
        return read_view_positions(root / data.headers_csv, [record.patient_id for record in records])
    if not records or not all(Path(record.image_path).is_file() for record in records):
        return None
    views, unknown = view_positions_from_images(records)
    listing = Path(data.cache_dir) / "unknown_views.csv"
    if len(unknown):
        make_directory(listing.parent)
        unknown.write(listing)
        where, reason = unknown.skipped[0]
        print(f"The split puts {len(unknown)} patient(s) whose DICOM header gives no view position in a stratum "
              f"of their own; the first: {where}: {reason}; all of them: {listing}")
    return views


def prepare_split(config: Config, split_file: str | Path | None = None, progress: bool = True,
                  require_images: bool = True) -> PreparedSplit:
    """Validated train and validation records; the split file is created on first use, stratified by
    Target and, where `split_view_positions` finds them, the view positions. `require_images=False`
    needs the labels only (`fit-anchors`)."""
    root = data_root(config)
    data = config.data
    records, skipped = read_data_set(config, root, Path(data.cache_dir) / "skipped_labels.csv", require_images)
    split_file = Path(split_file) if split_file is not None else default_split_file(config)
    views = None if split_file.is_file() else split_view_positions(config, root, records)  # a new split only
    folds = load_or_create_folds(records, split_file, data.num_folds, data.split_seed, views)
    train, validation = split_records(records, folds, data.validation_fold)
    if data.max_images:
        train, validation = train[: data.max_images], validation[: data.max_images]
    return PreparedSplit(train, validation, split_file, skipped, VIEW_COLUMN in folds.columns)


def report_skips(report: SkipReport, what: str, path: Path) -> None:
    """Under the skip policy: write the full list to `path`, print the count, the first reason and the path.
    Without skips an earlier list at `path` is removed, so that it always describes the last build."""
    if not len(report):
        path.unlink(missing_ok=True)
        return
    make_directory(path.parent)
    report.write(path)
    where, reason = report.skipped[0]
    print(f"Skipped {len(report)} {what} under data.bad_file_policy=skip; the first: {where}: {reason}; "
          f"all of them: {path}")
