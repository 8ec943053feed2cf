"""`retinanet infer`: boxes for one image (JSON and a picture) or for a directory of DICOMs (a
Kaggle submission, resumable through its journal, `retinanet.serve.journal`), from a trained run
or an ensemble (`retinanet.serve.inference.Detector`); with `dicom_sr`, a DICOM Structured Report
per film (`retinanet.serve.reports`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from retinanet.data.dicom import DICOM_SUFFIXES, DicomReadError, is_dicom_file, read_image
from retinanet.data.rsna import SkipReport
from retinanet.data.split import report_skips
from retinanet.data.submission import write_submission
from retinanet.detection.detections import above
from retinanet.runtime.safe_writes import make_directory, write_json_atomically
from retinanet.serve import journal, reports
from retinanet.serve.ensembles import resolve_ensemble
from retinanet.serve.inference import Detector, InputError


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


def infer_image(detector: Detector, path: Path, output_dir: Path, image: np.ndarray | None = None,
                dicom_sr: bool = False, secondary_capture: bool = False) -> dict:
    """One image (read from `path` unless given) -> `<output_dir>/<stem>.json` and `<stem>.png`
    (boxes drawn in red), and with `dicom_sr` the film's report `<output_dir>/reports/<stem>.sr.dcm`
    (with `secondary_capture` also `<stem>.sc.dcm`); returns the JSON document plus the "outputs" written."""
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
    if dicom_sr:
        written = reports.write_film_reports(path, output_dir / reports.REPORTS, result["boxes"], result["scores"],
                                             result["image_probability"], reports.report_algorithm(detector),
                                             image if secondary_capture else None)
        document["outputs"] += [str(file) for file in written]
    return document


def unreadable_error(reason: str) -> DicomReadError:
    return DicomReadError(f"{reason} (pass --skip-unreadable or set data.bad_file_policy: skip to write the "
                          "submission without unreadable files)")


def infer_directory(detector: Detector, directory: Path, output_dir: Path, progress: bool = True,
                    skip_unreadable: bool = False, batch_size: int | None = None, dicom_sr: bool = False,
                    secondary_capture: bool = False) -> dict:
    """Every DICOM in `directory` -> `<output_dir>/submission.csv` (Kaggle format, one row per file).

    The detections go to the journal `<output_dir>/detections.jsonl` batch by batch
    (`retinanet.serve.journal`); run again after a kill, this skips the batches already there, and
    the submission, written from the journal, is byte-identical to an uninterrupted run's. An
    unreadable file stops with DicomReadError, unless `skip_unreadable`: then its row is left
    empty, and the files and reasons are listed in `<output_dir>/skipped_images.csv` and counted.
    `batch_size` defaults to evaluation.batch_size. With `dicom_sr` every readable film also gets
    its report in `<output_dir>/reports/` (written from the journal, after the submission), with
    `secondary_capture` its burned-in picture too.
    """
    files = dicom_files(directory)
    batch_size = batch_size or detector.config.evaluation.batch_size
    make_directory(output_dir)
    journal_path = output_dir / journal.JOURNAL
    resumed = _resume_journal(detector, files, journal_path, batch_size, skip_unreadable)
    entries, seconds = _detect_into_journal(detector, files, list(resumed.entries), journal_path, batch_size,
                                            progress, skip_unreadable)
    predictions, skipped = _kept_detections(detector, files, entries)
    submission, skipped_list = _write_submission(files, predictions, skipped, output_dir, skip_unreadable)
    num_detected = len(files) - len(resumed.entries)
    num_reports = 0
    if dicom_sr:
        num_reports = _write_reports(detector, files, entries, predictions, output_dir, secondary_capture)
    return {"submission": str(submission), "num_images": len(files), "num_unreadable": len(skipped),
            "num_boxes": sum(len(scores) for _, scores in predictions.values()),
            "num_positive_images": sum(1 for _, scores in predictions.values() if len(scores)),
            "score_threshold": detector.threshold, "batch_size": batch_size,
            "num_resumed": len(resumed.entries), "num_detected": num_detected,
            "journal_lines_dropped": resumed.torn_lines + resumed.unfinished_lines,
            "seconds": round(seconds, 3),
            "images_per_second": round(num_detected / seconds, 2) if num_detected else None,
            **({"num_reports": num_reports} if dicom_sr else {}),
            "outputs": [str(submission), str(journal_path), *([str(skipped_list)] if skipped_list else []),
                        *([str(output_dir / reports.REPORTS)] if num_reports else [])]}


def _resume_journal(detector: Detector, files: list[Path], journal_path: Path, batch_size: int,
                    skip_unreadable: bool) -> journal.Resumed:
    """The journal's whole batches, for the same model, batch size and files (a new journal if none)."""
    patient_ids = [path.stem for path in files]
    header = journal.journal_header(journal.model_fingerprint(detector.config, detector.models), batch_size,
                                    patient_ids)
    resumed = journal.open_journal(journal_path, header, patient_ids)
    unreadable = [entry["unreadable"] for entry in resumed.entries if "unreadable" in entry]
    if unreadable and not skip_unreadable:  # journaled by an earlier run that skipped them
        raise unreadable_error(unreadable[0])
    return resumed


def _detect_into_journal(detector: Detector, files: list[Path], entries: list[dict], journal_path: Path,
                         batch_size: int, progress: bool, skip_unreadable: bool) -> tuple[list[dict], float]:
    """Detect the files after the journal's `entries`, appending each batch to the journal: (every
    entry, the seconds spent)."""
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
    return entries, time.perf_counter() - start


def _kept_detections(detector: Detector, files: list[Path], entries: list[dict]) -> tuple[dict, SkipReport]:
    """({patient: (boxes, scores) at the detector's threshold}, the unreadable files and why)."""
    skipped, predictions = SkipReport(), {}
    for path, entry in zip(files, entries):
        if "unreadable" in entry:
            skipped.add(str(path), entry["unreadable"])
        else:
            predictions[path.stem] = above(np.array(entry["boxes"], np.float64).reshape(-1, 4),
                                           np.array(entry["scores"], np.float64), detector.threshold)
    return predictions, skipped


def _write_reports(detector: Detector, files: list[Path], entries: list[dict], predictions: dict,
                   output_dir: Path, secondary_capture: bool) -> int:
    """A report per readable film from its kept detections (and a secondary capture, its picture
    read again); returns their number."""
    algorithm = reports.report_algorithm(detector)
    for path, entry in zip(files, entries):
        if path.stem in predictions:
            boxes, scores = predictions[path.stem]
            reports.write_film_reports(path, output_dir / reports.REPORTS, boxes, scores, entry["image_probability"],
                                       algorithm, detector.read(path) if secondary_capture else None)
    return len(predictions)


def _write_submission(files: list[Path], predictions: dict, skipped: SkipReport, output_dir: Path,
                      skip_unreadable: bool) -> tuple[Path, Path | None]:
    """submission.csv (a row per file) and, with `skip_unreadable`, the list of the unreadable files
    (None when there are none): their paths."""
    output = output_dir / "submission.csv"
    write_submission(output, predictions, [path.stem for path in files])
    if not skip_unreadable:
        return output, None
    skipped_list = output_dir / "skipped_images.csv"
    report_skips(skipped, "unreadable image(s), written as rows without boxes,", skipped_list)
    return output, skipped_list if len(skipped) else None


def run_inference(*, input_path, output_dir=None, checkpoint=None, run_dir=None, config_path=None,
                  threshold: float | None = None, progress: bool = True, skip_unreadable: bool | None = None,
                  batch_size: int | None = None, dicom_sr: bool = False, secondary_capture: bool = False) -> dict:
    """`retinanet infer`: a single image -> JSON + overlay; a directory of DICOMs -> submission.csv.

    `output_dir` defaults to the current directory. `skip_unreadable` (for a directory; default:
    the run's data.bad_file_policy is "skip") writes the submission without unreadable files;
    `batch_size` (a directory; default evaluation.batch_size) is the network's batch.
    `dicom_sr` writes a Structured Report per DICOM film (a PNG or JPEG input is an InputError),
    `secondary_capture` a picture with the boxes burned in too.
    Returns a summary whose "outputs" lists the files written and "score_threshold_source" says
    where its "score_threshold" came from (`Detector.threshold_origin`; "--threshold" for `threshold`).
    """
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"input not found: {input_path}")
    if dicom_sr and input_path.is_file() and not is_dicom_file(input_path):
        raise InputError(f"--dicom-sr: {input_path} is not a DICOM film; a report refers to the film's patient, "
                         "study and instance, which a PNG or JPEG does not have")
    if secondary_capture and not dicom_sr:
        raise InputError("--secondary-capture goes with --dicom-sr")
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
        summary = infer_directory(detector, input_path, output_dir, progress, skip_unreadable, batch_size, dicom_sr,
                                  secondary_capture)
    else:
        summary = infer_image(detector, input_path, output_dir, image, dicom_sr, secondary_capture)
    return {**summary, "score_threshold_source": detector.threshold_origin}
