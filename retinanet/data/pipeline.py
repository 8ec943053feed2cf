"""tf.data input pipeline: records -> batches of images and `[A, 4 + 1]` anchor targets.

Three steps, each taking what it needs as arguments (`retinanet.builders` maps the config onto
them): `image_sources` reads every record's image once, into the preprocessed cache or through a
check of the files, and returns the element source; `training_stream` or `evaluation_stream`
orders the elements (an endless, seeded stream for training, the records once for evaluation);
`batches` loads, augments and encodes them into batches of `{"images", "targets",
"image_labels", "scales", "original_sizes"}`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retinanet.config import PreprocessingConfig
from retinanet.data.augment import Augmenter
from retinanet.data.cache import build_cache, load_preprocessed
from retinanet.data.dicom import DicomReadError, read_image
from retinanet.data.order import augmentation_seed, record_at
from retinanet.data.preprocess import normalize
from retinanet.data.rsna import Record, SkipReport
from retinanet.data.split import report_skips
from retinanet.detection.targets import LabelEncoder
from retinanet.runtime.ordered_map import ordered_map


class NoReadableImageError(DicomReadError):
    """Every image of a split was unreadable and skipped: there is nothing to build a dataset from."""


@dataclass(frozen=True)
class ImageSource:
    """The readable records of a split and how the pipeline gets their images.

    `elements` holds one `(source, boxes [max_boxes, 4] padded, box count, scale, original size)`
    per record; `load(*element)` gives `(image uint8 [H, W, 1], boxes [N, 4] in input pixels,
    scale, original (height, width) int32 [2])`.
    """

    records: list[Record]
    elements: tf.data.Dataset
    load: Callable


def validate_images(records: list[Record], *, policy: str, num_workers: int = 2, progress: bool = True,
                    memory_limit_mib: float) -> tuple[list[Record], SkipReport]:
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


def image_sources(records: list[Record], preprocessing: PreprocessingConfig, *, use_cache: bool, cache_dir,
                  policy: str, num_workers: int, memory_limit_mib: float, progress: bool = True,
                  split: str = "train") -> ImageSource:
    """Every record's image read once: preprocessed into the cache under `cache_dir` (`use_cache`), or
    checked readable and read again by `load`. Unreadable images stop with DicomReadError under
    `policy` "error"; under "skip" they are left out here, before any epoch starts, and listed in
    `<cache_dir>/skipped_images_<split>.csv`. Images are read `num_workers` at a time, each within
    `memory_limit_mib`."""
    image_size = preprocessing.image_size
    if use_cache:
        cached, report = build_cache(records, preprocessing, cache_dir, policy=policy, num_workers=num_workers,
                                     progress=progress, memory_limit_mib=memory_limit_mib)
        records = [r for r in records if r.patient_id in cached]
        sources = [cached[r.patient_id].path for r in records]
        scales = np.array([cached[r.patient_id].scale for r in records], np.float32)
        sizes = np.array([cached[r.patient_id].original_size for r in records], np.int32).reshape(-1, 2)
    else:
        records, report = validate_images(records, policy=policy, num_workers=num_workers, progress=progress,
                                          memory_limit_mib=memory_limit_mib)
        sources = [r.image_path for r in records]
        scales = np.zeros(len(records), np.float32)  # computed while reading
        sizes = np.zeros((len(records), 2), np.int32)  # read with the image
    skip_list = Path(cache_dir) / f"skipped_images_{split}.csv"
    report_skips(report, "unreadable image(s)", skip_list)
    if not records:
        if not len(report):
            raise NoReadableImageError(f"no {split} images to build a dataset from")
        where, reason = report.skipped[0]
        raise NoReadableImageError(f"none of the {len(report)} {split} image(s) could be read (all skipped under "
                                   f"data.bad_file_policy: skip), e.g. {where}: {reason}; all of them: {skip_list}")
    padded, counts = _padded_boxes(records)

    def load(source, boxes, count, scale, original_size):
        if use_cache:
            image = tf.reshape(tf.io.decode_raw(tf.io.read_file(source), tf.uint8), (*image_size, 1))
        else:
            def read(path):
                processed, read_scale, read_size = load_preprocessed(path.decode(), preprocessing, memory_limit_mib)
                return processed, np.float32(read_scale), np.array(read_size, np.int32)

            image, scale, original_size = tf.numpy_function(read, [source], (tf.uint8, tf.float32, tf.int32))
            image = tf.reshape(image, image_size)[..., None]
            scale, original_size = tf.reshape(scale, []), tf.reshape(original_size, [2])
        image = tf.ensure_shape(image, (*image_size, 1))
        return image, boxes[:count] * scale, scale, original_size

    elements = tf.data.Dataset.from_tensor_slices((sources, padded, counts, scales, sizes))
    return ImageSource(records, elements, load)


def training_stream(source: ImageSource, *, seed: int, positive_fraction: float = 0.0,
                    positions: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """`(element, stream position)` pairs in the training order, forever: the element at position p
    is a pure function of (seed, p) (see retinanet/data/order.py). With `positive_fraction` > 0,
    images with boxes make up that share of the stream instead of their share of the records.
    `positions` (default 0, 1, 2...) picks the positions read, e.g. one worker's share from a
    resumed step on (`retinanet.data.order.worker_positions`)."""
    columns = source.elements.batch(len(source.records)).get_single_element()  # whole columns: random access
    counts = columns[2].numpy()
    positive_indices = [int(i) for i in np.flatnonzero(counts > 0)]
    negative_indices = [int(i) for i in np.flatnonzero(counts == 0)]
    positions = tf.data.Dataset.counter(dtype=tf.int64) if positions is None else positions

    def element_at(position):
        index = record_at(position, positive_indices, negative_indices, seed, positive_fraction)
        return tuple(tf.gather(column, index) for column in columns), position

    return positions.map(element_at)


def evaluation_stream(source: ImageSource) -> tf.data.Dataset:
    """`(element, position)` pairs of the records once, in order."""
    return tf.data.Dataset.zip((source.elements, tf.data.Dataset.counter(dtype=tf.int64)))


def batches(stream: tf.data.Dataset, source: ImageSource, *, encoder: LabelEncoder, augmenter: Augmenter | None,
            channels: int, seed: int, batch_size: int, drop_remainder: bool, parallel: int,
            deterministic: bool) -> tf.data.Dataset:
    """Batches of `{"images": float32 [B, H, W, channels], "targets": float32 [B, A, 5], "image_labels":
    float32 [B], "scales": float32 [B], "original_sizes": int32 [B, 2]}` (scale: original -> input
    pixels; original (height, width)) from a stream of `(element, position)`. Each example is
    augmented by `augmenter` (None: not at all) with a seed drawn from (`seed`, its position),
    reproducible whatever the parallelism, after a resume or on another worker; targets are
    `encoder`'s; `parallel` examples are prepared at once."""
    # XLA fuses the per-pixel arithmetic into one pass; unfused it cost several ms per image.
    normalize_fused = tf.function(normalize, jit_compile=True)

    def prepare(element, position):
        image, boxes, scale, original_size = source.load(*element)
        if augmenter is not None:
            image, boxes = tf.numpy_function(augmenter, [image, boxes, augmentation_seed(position, seed)],
                                             (tf.uint8, tf.float32), stateful=False)
            image, boxes = tf.ensure_shape(image, (*augmenter.image_size, 1)), tf.ensure_shape(boxes, (None, 4))
        targets = encoder(boxes, tf.zeros(tf.shape(boxes)[:1]))
        image_label = tf.cast(tf.shape(boxes)[0] > 0, tf.float32)
        return {"images": normalize_fused(image, channels), "targets": targets, "image_labels": image_label,
                "scales": scale, "original_sizes": original_size}

    dataset = stream.map(prepare, num_parallel_calls=parallel, deterministic=deterministic)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
