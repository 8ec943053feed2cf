"""Inference from a trained run: `Detector` and the `retinanet infer` workflow.

A run directory (or a weights file inside one) carries everything inference needs: the
resolved `config.yaml` (preprocessing, anchors, post-processing), the weights
(`best.weights.h5`, else `final.weights.h5`, else the latest `checkpoints/` entry) and the
run's score threshold (`threshold.json`: chosen by training on the validation of the best
weights, or by `retinanet evaluate --write-threshold`; without it `evaluation.score_threshold`
of the config). `Detector.threshold_origin` says which.

The run directory's layout and how a run's pieces are found are `retinanet.train.runs`'. Several
runs, or a cross-validation directory, make one ensemble Detector (`retinanet.serve.ensembles`).

Images go through exactly the training preprocessing (`read_image`, CLAHE, letterbox with
OpenCV); boxes come back as `x1, y1, x2, y2` in the original image's pixels, clipped to it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retinanet.builders import build_anchor_set, build_postprocessor
from retinanet.config import Config
from retinanet.data.dicom import DICOM_SUFFIXES, DicomReadError, read_image
from retinanet.data.preprocess import normalize, preprocess_image
from retinanet.data.rsna import SkipReport
from retinanet.detection.detections import forward_function, per_image_results
from retinanet.errors import UserError
from retinanet.serve.ensembles import EnsembleSource, resolve_ensemble
from retinanet.runtime.hardware import (available_cores, configure_threads, dtype_policy, inference_precision,
                                        resolve_threads, workers)
from retinanet.runtime.ordered_map import ordered_map
from retinanet.run_directory import WEIGHTS_SUFFIX, ModelLoadError, ModelSource, read_threshold
from retinanet.runtime.safe_writes import write_json_atomically
from retinanet.runtime.safe_writes import make_directory


class InputError(UserError, ValueError):
    """An inference input that cannot be processed (missing path, empty directory)."""


def build_untrained_model(config: Config):
    """The config's model, randomly initialised (no backbone download), under the run's dtype
    policy where this machine computes it natively, else under the one `auto` picks here."""
    from retinanet.builders import build_model

    runtime = config.runtime
    configure_threads(*resolve_threads(runtime.intra_op_threads, runtime.inter_op_threads, available_cores()))
    # A run's own weights replace any pretrained backbone: never fetch ImageNet weights here.
    config = replace(config, model=replace(config.model, weights="none"))
    with dtype_policy(inference_precision(runtime.mixed_precision)):
        return build_model(config)


def check_image_head(config: Config, weights: Path) -> None:
    """ModelLoadError when `weights` and the config disagree about the image-level head.

    Keras loads a file with the head into a model without one silently, and the other way round
    with a message that does not name the setting.
    """
    from retinanet.model.retinanet import stored_weights_have_image_head

    try:
        has_head = stored_weights_have_image_head(weights)
    except Exception as error:  # h5py and TF raise many types for a file that is not weights
        raise ModelLoadError(f"cannot read weights {weights}: {type(error).__name__}: {error}") from None
    if has_head != config.model.image_head:
        with_or_without = "with" if has_head else "without"
        raise ModelLoadError(f"{weights} was trained {with_or_without} the image-level head but the config has "
                             f"model.image_head: {str(config.model.image_head).lower()}; use the config of the run "
                             "that wrote it")


def build_inference_model(config: Config, weights: Path):
    """The config's model (see `build_untrained_model`) with `weights` loaded."""
    check_image_head(config, weights)
    model = build_untrained_model(config)
    try:
        if weights.name.endswith(WEIGHTS_SUFFIX):
            model.load_weights(str(weights))
        else:
            tf.train.Checkpoint(model=model).read(str(weights)).expect_partial().assert_existing_objects_matched()
    except Exception as error:  # h5py, Keras and TF raise many types for a bad or mismatched file
        raise ModelLoadError(f"cannot load weights {weights} into the model of its config: "
                             f"{type(error).__name__}: {error}") from None
    return model


class Detector:
    """A trained model, or an ensemble of them, plus everything inference needs; see the module docstring.

    Results are dicts {"boxes": float64 [N, 4] `x1, y1, x2, y2` original pixels, "scores": [N]
    (descending, >= the threshold), "image_probability": float, or None without the image head}.
    Boxes scoring below postprocessing.candidate_score_threshold never reach the threshold: it acts as
    the larger of the two. `model` is one Keras model or a list (an ensemble, see
    `retinanet.serve.ensembles`): all their passes are fused by the one postprocessor; `config` is the
    first run's.
    """

    def __init__(self, config: Config, model, *, threshold: float, source: ModelSource | None = None,
                 threshold_origin: str = "argument", sources: tuple[ModelSource, ...] | None = None):
        if config.postprocessing.image_gating != "none" and not config.model.image_head:
            raise ModelLoadError(f"postprocessing.image_gating={config.postprocessing.image_gating} needs "
                                 "model.image_head: true")
        self.models = list(model) if isinstance(model, (list, tuple)) else [model]
        self.model = self.models[0]
        self.config = config
        self.sources = tuple(sources) if sources is not None else ((source,) if source is not None else ())
        self.source = self.sources[0] if len(self.sources) == 1 else None
        self.threshold, self.threshold_origin = float(threshold), threshold_origin
        self.image_size = config.preprocessing.image_size
        self.has_image_head = "image_logits" in self.model.output
        self.anchor_set = build_anchor_set(config)
        self.postprocessor = build_postprocessor(config, self.anchor_set)
        # Batch {"images", "scales", "original_sizes"} -> (Postprocessor result, {}), traced once.
        self.forward = forward_function(self.models, self.postprocessor)

    @property
    def is_ensemble(self) -> bool:
        return len(self.models) > 1

    @classmethod
    def load(cls, *, checkpoint=None, run_dir=None, config_path=None, threshold: float | None = None,
             threshold_origin: str = "argument") -> "Detector":
        """From a run directory, a list of them (an ensemble; a cross-validation directory stands
        for its folds), or a checkpoint (+ optional config); `threshold` overrides the run's, and
        `threshold_origin` names where it came from."""
        return cls.from_ensemble(resolve_ensemble(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path),
                                 threshold=threshold, threshold_origin=threshold_origin)

    @classmethod
    def from_source(cls, source: ModelSource, threshold: float | None = None) -> "Detector":
        """Build the model of `source` and load its weights; threshold: argument > threshold.json > config."""
        return cls.from_ensemble(EnsembleSource((source,), source.run_dir), threshold)

    @classmethod
    def from_ensemble(cls, ensemble: EnsembleSource, threshold: float | None = None,
                      threshold_origin: str = "argument") -> "Detector":
        """Every model of an `EnsembleSource` (one for a single run); threshold: argument (from
        `threshold_origin`) > threshold.json of its threshold directory > the first run's
        evaluation.score_threshold."""
        if threshold is not None and not 0 <= threshold <= 1:
            raise InputError(f"threshold must be in [0, 1], got {threshold}")
        config = ensemble.config
        if threshold is not None:
            chosen, origin = float(threshold), threshold_origin
        elif ensemble.threshold_dir is not None:
            chosen, origin = read_threshold(ensemble.threshold_dir, config.evaluation.score_threshold)
        else:
            chosen = float(config.evaluation.score_threshold)
            origin = f"config evaluation.score_threshold of {ensemble.sources[0].config_path}"
        models = [build_inference_model(source.config, source.weights) for source in ensemble.sources]
        return cls(config, models, threshold=chosen, sources=ensemble.sources, threshold_origin=origin)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Original uint8 [h, w] -> (network-size uint8 [H, W], scale), as for training."""
        return preprocess_image(image, self.config.preprocessing)

    def detect_preprocessed(self, images, scales, original_sizes, threshold: float | None = None) -> list[dict]:
        """Preprocessed uint8 [B, H, W], scales [B] and original (h, w) sizes -> B results."""
        batch = {"images": normalize(np.asarray(images, np.uint8)[..., None], self.config.preprocessing.channels),
                 "scales": tf.constant(scales, tf.float32), "original_sizes": tf.constant(original_sizes, tf.int32)}
        result, _ = self.forward(batch)
        return per_image_results(result, self.threshold if threshold is None else threshold)

    def detect_array(self, image: np.ndarray, threshold: float | None = None) -> dict:
        """Original grey uint8 [h, w] -> one result."""
        processed, scale = self.preprocess(image)
        return self.detect_preprocessed([processed], [scale], [image.shape[:2]], threshold)[0]

    def read(self, path) -> np.ndarray:
        """An image file as `read_image` gives it, within the run's data.decode_memory_mib."""
        return read_image(path, memory_limit_mib=self.config.data.decode_memory_mib)

    def detect_image(self, path, threshold: float | None = None) -> dict:
        """A DICOM, PNG or JPEG file -> one result (DicomReadError if it cannot be read)."""
        return self.detect_array(self.read(path), threshold)

    def _load(self, path, skip_unreadable: bool = False):
        """(preprocessed image, scale, original size); with `skip_unreadable` a DicomReadError is returned."""
        try:
            image = self.read(path)
        except DicomReadError as error:
            if skip_unreadable:
                return error
            raise
        processed, scale = self.preprocess(image)
        return processed, scale, image.shape[:2]

    def detect_batches(self, paths, *, batch_size: int | None = None, progress: bool = True,
                       threshold: float | None = None, skip_unreadable: bool = False, done: int = 0):
        """Yield, for each run of `batch_size` consecutive paths (default evaluation.batch_size), the
        list of (path, result) in order; up to two batches are read ahead in data.num_parallel_calls
        threads (0: one per core) while the network runs, and no more are held in memory.

        An unreadable file raises DicomReadError at once, and nothing after it is read; with
        `skip_unreadable` its result is that error and it leaves the network's batch. `done` images
        counted before these start the progress bar.
        """
        paths = list(paths)
        batch_size = batch_size or self.config.evaluation.batch_size
        loaded = ordered_map(functools.partial(self._load, skip_unreadable=skip_unreadable), paths,
                             num_workers=workers(self.config.data.num_parallel_calls), ahead=2 * batch_size)
        with contextlib.closing(loaded), tqdm(total=done + len(paths), initial=done, desc="detecting", unit="img",
                                              disable=not progress) as bar:
            for start in range(0, len(paths), batch_size):
                batch = paths[start:start + batch_size]
                items = list(itertools.islice(loaded, len(batch)))
                readable = [item for item in items if not isinstance(item, DicomReadError)]
                results = iter(self.detect_preprocessed([item[0] for item in readable], [item[1] for item in readable],
                                                        [item[2] for item in readable], threshold)
                               if readable else [])
                bar.update(len(batch))
                yield [(path, item if isinstance(item, DicomReadError) else next(results))
                       for path, item in zip(batch, items)]

    def detect_paths(self, paths, *, batch_size: int | None = None, progress: bool = True,
                     threshold: float | None = None, skipped: SkipReport | None = None):
        """Yield (path, result) for image files in order, read and batched as by `detect_batches`.

        An unreadable file raises DicomReadError; with a `skipped` report it is added there
        instead (path and reason) and yields nothing.
        """
        for batch in self.detect_batches(paths, batch_size=batch_size, progress=progress, threshold=threshold,
                                         skip_unreadable=skipped is not None):
            for path, result in batch:
                if isinstance(result, DicomReadError):
                    skipped.add(str(path), str(result))
                else:
                    yield path, result


def dicom_files(directory: str | Path) -> list[Path]:
    """The DICOM files (by suffix) directly in `directory`, sorted; InputError if there are none."""
    directory = Path(directory)
    files = sorted(path for path in directory.iterdir() if path.is_file() and path.suffix.lower() in DICOM_SUFFIXES)
    if not files:
        raise InputError(f"no DICOM files ({', '.join(DICOM_SUFFIXES)}) in directory {directory}")
    stems = [path.stem for path in files]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise InputError(f"{directory}: several files for patient {duplicates[0]} (the patientId is the file name)")
    return files


def result_to_json(result: dict, image_path, image_shape, threshold: float) -> dict:
    """One result -> JSON-ready dict; boxes as x, y, width, height in original pixels with scores."""
    boxes = [{"x": float(x1), "y": float(y1), "width": float(x2 - x1), "height": float(y2 - y1), "score": float(score)}
             for (x1, y1, x2, y2), score in zip(result["boxes"], result["scores"])]
    document = {"image": str(image_path), "image_height": int(image_shape[0]), "image_width": int(image_shape[1]),
                "score_threshold": threshold, "boxes": boxes}
    if result["image_probability"] is not None and math.isfinite(result["image_probability"]):
        document["image_probability"] = result["image_probability"]
    return document


def infer_image(detector: Detector, path: Path, output_dir: Path, image: np.ndarray | None = None) -> dict:
    """One image (read from `path` unless given) -> `<output_dir>/<stem>.json` and `<stem>.png`
    (boxes drawn in red); returns the JSON document plus the "outputs" written."""
    from retinanet.visualize import draw_boxes, save_rgb

    image = detector.read(path) if image is None else image
    result = detector.detect_array(image)
    document = result_to_json(result, path, image.shape, detector.threshold)
    make_directory(output_dir)
    write_json_atomically(output_dir / f"{path.stem}.json", document)
    picture = draw_boxes(image, None, result["boxes"], result["scores"], title=path.name, threshold=detector.threshold,
                         image_probability=result["image_probability"])
    save_rgb(output_dir / f"{path.stem}.png", picture)
    document["outputs"] = [str(output_dir / f"{path.stem}.json"), str(output_dir / f"{path.stem}.png")]
    return document


def unreadable_error(reason: str) -> DicomReadError:
    return DicomReadError(f"{reason} (pass --skip-unreadable or set data.bad_file_policy: skip to write the "
                          "submission without unreadable files)")


def infer_directory(detector: Detector, directory: Path, output_dir: Path, progress: bool = True,
                    skip_unreadable: bool = False, batch_size: int | None = None) -> dict:
    """Every DICOM in `directory` -> `<output_dir>/submission.csv` (Kaggle format, one row per file).

    The detections go to the journal `<output_dir>/detections.jsonl` batch by batch
    (`retinanet.serve.journal`); run again after a kill, this skips the batches already there, and
    the submission, written from the journal, is byte-identical to an uninterrupted run's. An
    unreadable file stops with DicomReadError, unless `skip_unreadable`: then its row is left
    empty, and the files and reasons are listed in `<output_dir>/skipped_images.csv` and counted.
    `batch_size` defaults to evaluation.batch_size.
    """
    from retinanet.data.split import report_skips
    from retinanet.data.submission import write_submission
    from retinanet.detection.detections import above
    from retinanet.serve import journal

    files = dicom_files(directory)
    patient_ids = [path.stem for path in files]
    batch_size = batch_size or detector.config.evaluation.batch_size
    make_directory(output_dir)
    journal_path = output_dir / journal.JOURNAL
    header = journal.journal_header(journal.model_fingerprint(detector.config, detector.models), batch_size,
                                    patient_ids)
    resumed = journal.open_journal(journal_path, header, patient_ids)
    entries = list(resumed.entries)
    unreadable = [entry["unreadable"] for entry in entries if "unreadable" in entry]
    if unreadable and not skip_unreadable:  # journaled by an earlier run that skipped them
        raise unreadable_error(unreadable[0])
    start = time.perf_counter()
    try:
        # Threshold 0: the journal keeps every box; the run's threshold applies to the submission.
        for batch in detector.detect_batches(files[len(entries):], batch_size=batch_size, progress=progress,
                                             threshold=0.0, skip_unreadable=skip_unreadable, done=len(entries)):
            new_entries = [journal.unreadable_entry(path.stem, str(result)) if isinstance(result, DicomReadError)
                           else journal.detection_entry(path.stem, result) for path, result in batch]
            journal.append_batch(journal_path, new_entries)
            entries += new_entries
    except DicomReadError as error:
        raise unreadable_error(str(error)) from None
    seconds = time.perf_counter() - start
    skipped = SkipReport()
    predictions = {}
    for path, entry in zip(files, entries):
        if "unreadable" in entry:
            skipped.add(str(path), entry["unreadable"])
        else:
            predictions[path.stem] = above(np.array(entry["boxes"], np.float64).reshape(-1, 4),
                                           np.array(entry["scores"], np.float64), detector.threshold)
    output = output_dir / "submission.csv"
    write_submission(output, predictions, patient_ids)
    outputs = [str(output), str(journal_path)]
    if skip_unreadable:
        skipped_list = output_dir / "skipped_images.csv"
        report_skips(skipped, "unreadable image(s), written as rows without boxes,", skipped_list)
        outputs += [str(skipped_list)] if len(skipped) else []
    num_detected = len(files) - len(resumed.entries)
    return {"submission": str(output), "num_images": len(files), "num_unreadable": len(skipped),
            "num_boxes": sum(len(scores) for _, scores in predictions.values()),
            "num_positive_images": sum(1 for _, scores in predictions.values() if len(scores)),
            "score_threshold": detector.threshold, "batch_size": batch_size,
            "num_resumed": len(resumed.entries), "num_detected": num_detected,
            "journal_lines_dropped": resumed.torn_lines + resumed.unfinished_lines,
            "seconds": round(seconds, 3),
            "images_per_second": round(num_detected / seconds, 2) if num_detected else None,
            "outputs": outputs}


def run_inference(*, input_path, output_dir=None, checkpoint=None, run_dir=None, config_path=None,
                  threshold: float | None = None, progress: bool = True, skip_unreadable: bool | None = None,
                  batch_size: int | None = None) -> dict:
    """`retinanet infer`: a single image -> JSON + overlay; a directory of DICOMs -> submission.csv.

    `output_dir` defaults to the current directory. `skip_unreadable` (for a directory; default:
    the run's data.bad_file_policy is "skip") writes the submission without unreadable files;
    `batch_size` (a directory; default evaluation.batch_size) is the network's batch.
    Returns a summary whose "outputs" lists the files written and "score_threshold_source" says
    where its "score_threshold" came from (`Detector.threshold_origin`; "--threshold" for `threshold`).
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"input not found: {input_path}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    ensemble = resolve_ensemble(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path)
    # Fail on an empty directory or an unreadable image before spending time on the model.
    image = None if input_path.is_dir() else read_image(
        input_path, memory_limit_mib=ensemble.config.data.decode_memory_mib)
    if input_path.is_dir():
        dicom_files(input_path)
    detector = Detector.from_ensemble(ensemble, threshold=threshold, threshold_origin="--threshold")
    output_dir = Path(output_dir) if output_dir is not None else Path.cwd()
    if input_path.is_dir():
        if skip_unreadable is None:
            skip_unreadable = detector.config.data.bad_file_policy == "skip"
        summary = infer_directory(detector, input_path, output_dir, progress, skip_unreadable, batch_size)
    else:
        summary = infer_image(detector, input_path, output_dir, image)
    return {**summary, "score_threshold_source": detector.threshold_origin}
