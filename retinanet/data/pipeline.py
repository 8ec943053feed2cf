"""tf.data input pipeline: RSNA records -> batches of images and `[A, 4 + 1]` anchor targets.

`prepare_split(config)` reads and validates the labels (generating the synthetic data set
first when the config asks for it) and fixes the patient-level folds in a split file.
`build_dataset(config, split)` then streams `{"images", "targets", "image_labels", "scales",
"original_sizes"}` batches, from the preprocessed cache (default) or straight from the DICOMs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retinanet.builders import build_anchor_set, build_label_encoder
from retinanet.detection.anchors import AnchorSet
from retinanet.config import Config, TrainingConfig
from retinanet.data.augment import Augmenter
from retinanet.data.cache import build_cache, load_preprocessed
from retinanet.data.decode_checks import DEFAULT_LIMIT_MIB
from retinanet.data.dicom import DicomReadError, read_image
from retinanet.data.order import augmentation_seed, record_at, worker_positions
from retinanet.data.preprocess import normalize
from retinanet.data.rsna import Record, SkipReport, load_or_create_folds, read_labels, split_records
from retinanet.data.views import VIEW_COLUMN, read_view_positions, view_positions_from_images
from retinanet.runtime.hardware import workers
from retinanet.runtime.ordered_map import ordered_map
from retinanet.runtime.safe_writes import FileWriteError, make_directory

SPLITS = ("train", "validation")


class NoReadableImageError(DicomReadError):
    """Every image of a split was unreadable and skipped: there is nothing to build a dataset from."""


@dataclass(frozen=True)
class PreparedSplit:
    train: list[Record]
    validation: list[Record]
    split_file: Path
    skipped: SkipReport
    by_view_position: bool = False  # the split file's strata are (Target, ViewPosition), not Target alone


def data_root(config: Config) -> Path:
    return Path(config.data.root)


def ensure_data(config: Config, progress: bool = True) -> Path:
    """Return the data root; generate the synthetic set there first if configured and missing."""
    root = data_root(config)
    labels = root / config.data.labels_csv
    if not labels.is_file() and config.data.synthetic is not None:
        from retinanet.data.synthetic import generate_synthetic_rsna

        synthetic = config.data.synthetic
        print(f"Generating the synthetic RSNA-format data set in {root} (first run only)")
        try:
            generate_synthetic_rsna(root, num_train=synthetic.num_train, num_test=synthetic.num_test,
                                    size=synthetic.size, seed=synthetic.seed, progress=progress)
        except FileWriteError as error:  # a read-only or full disk, a path through a file
            raise FileWriteError(f"{error} (generating the synthetic data set of data.synthetic in data.root "
                                 f"{root})") from error
        except OSError as error:  # foreign files in data.root
            raise FileWriteError(f"could not generate the synthetic data set (data.synthetic) in data.root {root}: "
                                 f"{error.strerror or error} ({error.filename or root})") from error
    return root


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
    root = ensure_data(config, progress)
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


def validate_images(records: list[Record], *, policy: str, num_workers: int = 2, progress: bool = True,
                    memory_limit_mib: float = DEFAULT_LIMIT_MIB) -> tuple[list[Record], SkipReport]:
    """Read every image once before training so that a bad file never surfaces mid-epoch; under
    policy "error" the first unreadable one stops the check at once."""
    report = SkipReport()

    def check(record: Record):
        try:
            read_image(record.image_path, memory_limit_mib=memory_limit_mib)
            return None
        except DicomReadError as error:
            return str(error)

    good = []
    with contextlib.closing(ordered_map(check, records, num_workers=num_workers, ahead=2 * num_workers)) as errors:
        for record, error in tqdm(zip(records, errors), total=len(records), desc="checking images",
                                  disable=not progress, unit="img"):
            if error is None:
                good.append(record)
            elif policy == "error":
                raise DicomReadError(f"{error} (set data.bad_file_policy: skip to leave such files out)")
            else:
                report.add(record.image_path, error)
    return good, report


def _padded_boxes(records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-image boxes -> ([num_images, max_boxes, 4], [num_images] counts)."""
    counts = np.array([len(r.boxes) for r in records], np.int32)
    padded = np.zeros((len(records), max(1, counts.max(initial=0)), 4), np.float32)
    for i, record in enumerate(records):
        padded[i, : counts[i]] = record.boxes
    return padded, counts


def source_dataset(config: Config, records: list[Record], progress: bool = True, split: str = "train"):
    """(dataset of sources, records used, `load`), in record order.

    `load(*element)` gives `(image uint8 [H, W, 1], boxes [N, 4] in input pixels, scale, original
    (height, width) int32 [2])`.
    The records used can be fewer: under bad_file_policy=skip, unreadable images are left out
    here, before any epoch starts, and listed in `<data.cache_dir>/skipped_images_<split>.csv`.
    """
    data, pre = config.data, config.preprocessing
    image_size = pre.image_size
    if data.use_cache:
        cached, report = build_cache(records, pre, data.cache_dir, policy=data.bad_file_policy,
                                     num_workers=workers(data.num_parallel_calls), progress=progress,
                                     memory_limit_mib=data.decode_memory_mib)
        records = [r for r in records if r.patient_id in cached]
        sources = [cached[r.patient_id].path for r in records]
        scales = np.array([cached[r.patient_id].scale for r in records], np.float32)
        sizes = np.array([cached[r.patient_id].original_size for r in records], np.int32).reshape(-1, 2)
    else:
        records, report = validate_images(records, policy=data.bad_file_policy,
                                          num_workers=workers(data.num_parallel_calls), progress=progress,
                                          memory_limit_mib=data.decode_memory_mib)
        sources = [r.image_path for r in records]
        scales = np.zeros(len(records), np.float32)  # computed while reading
        sizes = np.zeros((len(records), 2), np.int32)  # read with the image
    skip_list = Path(data.cache_dir) / f"skipped_images_{split}.csv"
    report_skips(report, "unreadable image(s)", skip_list)
    if not records:
        if not len(report):
            raise NoReadableImageError(f"no {split} images to build a dataset from")
        where, reason = report.skipped[0]
        raise NoReadableImageError(f"none of the {len(report)} {split} image(s) could be read (all skipped under "
                                   f"data.bad_file_policy: skip), e.g. {where}: {reason}; all of them: {skip_list}")
    padded, counts = _padded_boxes(records)

    def load(source, boxes, count, scale, original_size):
        if data.use_cache:
            image = tf.reshape(tf.io.decode_raw(tf.io.read_file(source), tf.uint8), (*image_size, 1))
        else:
            def read(path):
                processed, read_scale, read_size = load_preprocessed(path.decode(), pre, data.decode_memory_mib)
                return processed, np.float32(read_scale), np.array(read_size, np.int32)

            image, scale, original_size = tf.numpy_function(read, [source], (tf.uint8, tf.float32, tf.int32))
            image = tf.reshape(image, image_size)[..., None]
            scale, original_size = tf.reshape(scale, []), tf.reshape(original_size, [2])
        image = tf.ensure_shape(image, (*image_size, 1))
        return image, boxes[:count] * scale, scale, original_size

    dataset = tf.data.Dataset.from_tensor_slices((sources, padded, counts, scales, sizes))
    return dataset, records, load


def _columns(dataset: tf.data.Dataset, size: int) -> tuple:
    """The source dataset's columns as whole tensors, for random access by record index."""
    return dataset.batch(size).get_single_element()


def shuffled_stream(dataset: tf.data.Dataset, training: TrainingConfig, size: int, *,
                    positions: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """Source elements (source, boxes, count, scale) in the training order, forever: the element
    at stream position p is a pure function of (training.seed, p) (see retinanet/data/order.py).
    With `training.positive_fraction` > 0, images with boxes make up that share of the stream
    instead of their share of the data set. `positions` (default 0, 1, 2...) picks the positions
    read, e.g. one worker's share from a resumed step on (`order.worker_positions`)."""
    return _stream_with_positions(dataset, training, size, positions).map(lambda element, position: element)


def _stream_with_positions(dataset: tf.data.Dataset, training: TrainingConfig, size: int,
                           positions: tf.data.Dataset | None) -> tf.data.Dataset:
    """`shuffled_stream`, each element paired with its stream position: (element, position)."""
    columns = _columns(dataset, size)
    counts = columns[2].numpy()
    positive_indices = [int(i) for i in np.flatnonzero(counts > 0)]
    negative_indices = [int(i) for i in np.flatnonzero(counts == 0)]
    positions = tf.data.Dataset.counter(dtype=tf.int64) if positions is None else positions

    def element_at(position):
        index = record_at(position, positive_indices, negative_indices, training.seed, training.positive_fraction)
        return tuple(tf.gather(column, index) for column in columns), position

    return positions.map(element_at)


def build_dataset(config: Config, split: str, *, records: list[Record] | None = None,
                  training: bool | None = None, deterministic: bool | None = None,
                  progress: bool = True, start_step: int = 0, worker: int = 0, num_workers: int = 1,
                  batch_size: int | None = None, anchor_set: AnchorSet | None = None) -> tf.data.Dataset:
    """Batches of `{"images": float32 [B, H, W, C], "targets": float32 [B, A, 5],
    "image_labels": float32 [B], "scales": float32 [B], "original_sizes": int32 [B, 2]}` (scale:
    original -> input pixels; original (height, width)).

    `split` is "train" or "validation"; training (default: split == "train") shuffles,
    augments and repeats forever. `records` overrides the split's records.
    Training reads the stream from `start_step` on (a resumed run's step) and only the share of
    worker `worker` of `num_workers` of every global batch of `training.batch_size`, in batches
    of `batch_size` (default: that share). The targets are those of `anchor_set` (default: the
    config's anchors at preprocessing.image_size).
    """
    return build_dataset_and_records(config, split, records=records, training=training,
                                     deterministic=deterministic, progress=progress, start_step=start_step,
                                     worker=worker, num_workers=num_workers, batch_size=batch_size,
                                     anchor_set=anchor_set)[0]


def build_dataset_and_records(config: Config, split: str, *, records: list[Record] | None = None,
                              training: bool | None = None, deterministic: bool | None = None,
                              progress: bool = True, start_step: int = 0, worker: int = 0, num_workers: int = 1,
                              batch_size: int | None = None,
                              anchor_set: AnchorSet | None = None) -> tuple[tf.data.Dataset, list[Record]]:
    """`build_dataset`, plus the records in dataset order (without any skipped as unreadable)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    training = split == "train" if training is None else training
    deterministic = config.training.deterministic if deterministic is None else deterministic
    if records is None:
        prepared = prepare_split(config, progress=progress)
        records = prepared.train if split == "train" else prepared.validation
    dataset, records, load = source_dataset(config, records, progress, split)
    image_size = config.preprocessing.image_size
    encoder = build_label_encoder(config.anchors, anchor_set or build_anchor_set(config))
    augmentation = config.augmentation
    channels = config.preprocessing.channels
    augmenter = Augmenter(augmentation, image_size, config.training.seed)
    # XLA fuses the per-pixel arithmetic into one pass; unfused it cost several ms per image.
    normalize_fused = tf.function(normalize, jit_compile=True)
    parallel = workers(config.data.num_parallel_calls)

    global_batch = config.training.batch_size
    if training:
        positions = worker_positions(start_step, global_batch, worker, num_workers)
        dataset = _stream_with_positions(dataset, config.training, len(records), positions)
    else:
        dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.counter(dtype=tf.int64)))
    # One stateless seed per stream position keeps augmentation reproducible whatever the
    # parallelism, and the same after a resume or on another worker.
    dataset = dataset.map(lambda element, position: (element, augmentation_seed(position, config.training.seed)))

    def prepare(example, seed):
        image, boxes, scale, original_size = load(*example)
        if training and augmentation.enabled:
            image, boxes = tf.numpy_function(augmenter, [image, boxes, seed], (tf.uint8, tf.float32), stateful=False)
            image, boxes = tf.ensure_shape(image, (*image_size, 1)), tf.ensure_shape(boxes, (None, 4))
        targets = encoder(boxes, tf.zeros(tf.shape(boxes)[:1]))
        image_label = tf.cast(tf.shape(boxes)[0] > 0, tf.float32)
        return {"images": normalize_fused(image, channels), "targets": targets, "image_labels": image_label,
                "scales": scale, "original_sizes": original_size}

    dataset = dataset.map(prepare, num_parallel_calls=parallel, deterministic=deterministic)
    if batch_size is None:
        batch_size = global_batch // num_workers if training else config.evaluation.batch_size
    dataset = dataset.batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE), records
