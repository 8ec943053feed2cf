"""Time inference from a 1024 px DICOM file to boxes, by stage, for the Keras model and the SavedModel.

    python benchmarks/infer.py                      # configs/rsna.yaml, random weights
    python benchmarks/infer.py --run-dir runs/x     # a trained run
    python benchmarks/infer.py --dicom some.dcm --repeats 20
    python benchmarks/infer.py --run-dir runs/x --directory dicoms/ [--batch-size 8]
    python benchmarks/infer.py --images 64          # `infer` on 64 synthetic 1024 px DICOMs

Prints the median over warm runs of reading, preprocessing, network and post-processing; with
--directory or --images, the images per second of `retinanet infer` on a directory instead.

Two paths are timed on the same file, each stage as the median over repeated warm runs:
- Keras: read_image | preprocess (CLAHE + letterbox, OpenCV) | network | post-processing;
- SavedModel (retinanet.serve.export): read_image | CLAHE by the caller | one graph call holding
  the letterbox resize, network and post-processing.
A directory is timed through `infer_directory` as `retinanet infer` runs it (read-ahead threads,
batches, the journal and the submission), after one untimed batch has traced the model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from retinanet.config import ConfigError, load_config
from retinanet.data.dicom import DicomReadError, read_image
from retinanet.data.preprocess import apply_clahe, normalize
from retinanet.serve.infer import dicom_files, infer_directory
from retinanet.serve.inference import Detector, InputError, ModelLoadError, build_untrained_model
from retinanet.serve.journal import JournalError
from retinanet.detection.postprocess import network_pass

STAGES = ("read", "preprocess", "network", "postprocess")


def synthetic_dicom(directory: Path, size: int = 1024) -> Path:
    """One synthetic RSNA-style JPEG DICOM of size x size pixels in `directory`."""
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    generate_synthetic_rsna(directory, num_train=0, num_test=1, size=size, seed=0, progress=False)
    return next((directory / "stage_2_test_images").glob("*.dcm"))


def _median_times(run, repeats: int, warmup: int) -> dict:
    """Call `run()` (returning {stage: seconds}) warmup + repeats times -> {stage: median ms}."""
    for _ in range(warmup):
        run()
    samples = [run() for _ in range(repeats)]
    return {stage: 1000 * statistics.median(sample[stage] for sample in samples) for stage in samples[0]}


def time_keras(detector: Detector, path: Path, repeats: int, warmup: int) -> dict:
    """Median ms per stage of the Keras path; each stage ends with its results in numpy."""
    post = detector.postprocessor
    spec = tf.TensorSpec([None, *detector.image_size, detector.config.preprocessing.channels], tf.float32)
    network = tf.function(lambda images: [outputs for outputs, _ in post.run_model(detector.model, images)],
                          input_signature=[spec])
    mirrored = [False, True] if post.flip_tta else [False]
    finish = tf.function(lambda outputs, scales, sizes: post(
        [network_pass(item, flag) for item, flag in zip(outputs, mirrored)], scales, sizes))

    def run() -> dict:
        times, start = {}, time.perf_counter()
        image = read_image(path)
        times["read"], start = time.perf_counter() - start, time.perf_counter()
        processed, scale = detector.preprocess(image)
        images = normalize(processed[None, ..., None], detector.config.preprocessing.channels)
        times["preprocess"], start = time.perf_counter() - start, time.perf_counter()
        outputs = network(images)
        _ = [tensor.numpy() for tensor in tf.nest.flatten(outputs)]
        times["network"], start = time.perf_counter() - start, time.perf_counter()
        result = finish(outputs, tf.constant([scale], tf.float32), tf.constant([image.shape[:2]], tf.int32))
        _ = {key: value.numpy() for key, value in result.items()}
        times["postprocess"] = time.perf_counter() - start
        return times

    return _median_times(run, repeats, warmup)


def time_saved_model(export_dir: Path, path: Path, repeats: int, warmup: int) -> dict:
    """Median ms per stage of the SavedModel path (network and post-processing are one graph call)."""
    loaded = tf.saved_model.load(str(export_dir))
    serve = loaded.signatures["serving_default"]
    clahe = bool(loaded.clahe.numpy())
    clip_limit, tile_grid = float(loaded.clahe_clip_limit.numpy()), int(loaded.clahe_tile_grid.numpy())

    def run() -> dict:
        times, start = {}, time.perf_counter()
        image = read_image(path)
        times["read"], start = time.perf_counter() - start, time.perf_counter()
        if clahe:
            image = apply_clahe(image, clip_limit, tile_grid)
        times["preprocess"], start = time.perf_counter() - start, time.perf_counter()
        _ = {key: value.numpy() for key, value in serve(image=tf.constant(image)).items()}
        times["graph"] = time.perf_counter() - start
        return times

    return _median_times(run, repeats, warmup)


def format_table(keras_times: dict, saved_model_times: dict) -> str:
    rows = [("read DICOM", keras_times["read"], saved_model_times["read"]),
            ("preprocess (CLAHE, letterbox)", keras_times["preprocess"], saved_model_times["preprocess"]),
            ("network", keras_times["network"], None),
            ("post-processing", keras_times["postprocess"], None),
            ("resize + network + post (graph)", None, saved_model_times["graph"]),
            ("total", sum(keras_times.values()), sum(saved_model_times.values()))]
    lines = [f"{'median ms per image':32s} {'Keras':>9s} {'SavedModel':>11s}"]
    for name, keras_value, saved_value in rows:
        cells = [f"{value:9.1f}" if value is not None else f"{'':9s}" for value in (keras_value, saved_value)]
        lines.append(f"{name:32s} {cells[0]} {cells[1]:>11s}")
    lines.append("(SavedModel preprocessing is the caller's CLAHE; its letterbox resize runs in the graph)")
    return "\n".join(lines)


def load_detector(config_path, run_dir, checkpoint, overrides) -> Detector:
    """The run's or checkpoint's Detector, else the model of `config_path`, randomly initialised."""
    if run_dir is not None or checkpoint is not None:
        return Detector.load(run_dir=run_dir, checkpoint=checkpoint)
    config = load_config(config_path, overrides)
    return Detector(config, build_untrained_model(config), threshold=config.evaluation.score_threshold)


def run_directory_benchmark(*, config_path="configs/rsna.yaml", run_dir=None, checkpoint=None, directory=None,
                            num_images: int = 32, batch_size: int | None = None, overrides=()) -> str:
    """Time `infer` on `directory` (default: `num_images` synthetic 1024 px DICOMs) into a scratch
    output directory and return the printable report: images, seconds and images/s."""
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    detector = load_detector(config_path, run_dir, checkpoint, overrides)
    batch_size = batch_size or detector.config.evaluation.batch_size
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if directory is None:
            directory = generate_synthetic_rsna(scratch / "data", num_train=0, num_test=num_images, size=1024, seed=0,
                                                progress=False) / "stage_2_test_images"
        list(detector.detect_paths(dicom_files(directory)[:batch_size], batch_size=batch_size, progress=False))
        summary = infer_directory(detector, Path(directory), scratch / "output", progress=True,
                                  skip_unreadable=True, batch_size=batch_size)
    config = detector.config
    return (f"{directory}: {summary['num_images']} DICOMs ({summary['num_unreadable']} unreadable) -> input "
            f"{config.preprocessing.image_size[1]}x{config.preprocessing.image_size[0]}, batches of {batch_size}, "
            f"{config.runtime.mixed_precision}, flip TTA {config.postprocessing.flip_tta}, "
            f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads\n"
            f"{summary['seconds']:.1f} s, {summary['images_per_second']:.2f} images/s (read, preprocess, network, "
            "post-processing, journal and submission; the model traced beforehand)")


def run_benchmark(*, config_path="configs/rsna.yaml", run_dir=None, checkpoint=None, dicom=None,
                  repeats: int = 10, warmup: int = 2, overrides=()) -> str:
    """Time both paths and return the printable report. Without a run or checkpoint the model of
    `config_path` is randomly initialised: latency does not depend on the weights."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        detector = load_detector(config_path, run_dir, checkpoint, overrides)
        path = Path(dicom) if dicom is not None else synthetic_dicom(scratch / "data")
        from retinanet.serve.export import export_detector

        export_detector(detector, scratch / "exported")
        keras_times = time_keras(detector, path, repeats, warmup)
        saved_model_times = time_saved_model(scratch / "exported", path, repeats, warmup)
        image = read_image(path)
    config = detector.config
    header = (f"{path.name}: {image.shape[1]}x{image.shape[0]} px -> input {config.preprocessing.image_size[1]}x"
              f"{config.preprocessing.image_size[0]}, {config.runtime.mixed_precision}, flip TTA "
              f"{config.postprocessing.flip_tta}, {repeats} warm runs (median), "
              f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
    return header + "\n" + format_table(keras_times, saved_model_times)


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
