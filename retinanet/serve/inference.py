"""Inference from a trained run: `Detector` (the `retinanet infer` job is `retinanet.serve.infer`).

A run directory (or a weights file inside one) carries everything inference needs: the
resolved `config.yaml` (preprocessing, anchors, post-processing), the weights
(`best.weights.h5`, else `final.weights.h5`, else the latest `checkpoints/` entry) and the
run's score threshold (`threshold.json`: chosen by training on the validation of the best
weights, or by `retinanet evaluate --write-threshold`; without it `evaluation.score_threshold`
of the config). `Detector.threshold_origin` says which.

The run directory's layout and how a run's pieces are found are `retinanet.run_directory`'s. Several
runs, or a cross-validation directory, make one ensemble Detector (`retinanet.serve.ensembles`).

Images go through exactly the training preprocessing (`read_image`, CLAHE, letterbox with
OpenCV); boxes come back as `x1, y1, x2, y2` in the original image's pixels, clipped to it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retinanet.builders import build_anchor_set, build_postprocessor
from retinanet.config import Config
from retinanet.data.dicom import DicomReadError, read_image
from retinanet.data.preprocess import normalize, preprocess_image
from retinanet.data.rsna import SkipReport
from retinanet.detection.detections import forward_function, per_image_results
from retinanet.errors import UserError
from retinanet.serve.ensembles import EnsembleSource, resolve_ensemble
from retinanet.runtime.hardware import (available_cores, configure_threads, dtype_policy, inference_precision,
                                        resolve_threads, workers)
from retinanet.runtime.ordered_map import ordered_map
from retinanet.run_directory import WEIGHTS_SUFFIX, ModelLoadError, ModelSource, read_threshold


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

    def _load(self, item, skip_unreadable: bool = False, fetch=None):
        """(preprocessed image, scale, original size) of the file `item`, or of the file `fetch(item)`
        gives; with `skip_unreadable` a DicomReadError (of reading or fetching) is returned."""
        try:
            image = self.read(item if fetch is None else fetch(item))
        except DicomReadError as error:
            if skip_unreadable:
                return error
            raise
        processed, scale = self.preprocess(image)
        return processed, scale, image.shape[:2]

    def detect_batches(self, paths, *, batch_size: int | None = None, progress: bool = True,
                       threshold: float | None = None, skip_unreadable: bool = False, done: int = 0, fetch=None):
        """Yield, for each run of `batch_size` consecutive paths (default evaluation.batch_size), the
        list of (path, result) in order; up to two batches are read ahead in data.num_parallel_calls
        threads (0: one per core) while the network runs, and no more are held in memory.

        An unreadable file raises DicomReadError at once, and nothing after it is read; with
        `skip_unreadable` its result is that error and it leaves the network's batch. `done` images
        counted before these start the progress bar. With `fetch`, `paths` are any items and
        `fetch(item)` (called in the reading threads, so as far ahead) gives each one's file, e.g. a
        film fetched from a server; it raises DicomReadError for an item it cannot give.
        """
        paths = list(paths)
        batch_size = batch_size or self.config.evaluation.batch_size
        loaded = ordered_map(functools.partial(self._load, skip_unreadable=skip_unreadable, fetch=fetch), paths,
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
