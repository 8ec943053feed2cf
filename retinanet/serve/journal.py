"""The detections journal that makes `retinanet infer` on a directory resumable.

`<output>/detections.jsonl` starts with a header line recording what the detections depend on:
a fingerprint of the model (weights and the config sections of inference), the batch size, and
the number and names of the files. One line per image follows, in the order of the sorted
file list: {"patientId", "boxes": [[x1, y1, x2, y2], ...] in original pixels, "scores",
"image_probability"} or {"patientId", "unreadable": reason}. Boxes are kept at every score the
post-processing returns (the score threshold is applied when the submission is written), and
JSON keeps Python floats exactly, so that a submission written from the journal does not depend
on whether the lines were read back or just computed.

Every batch is appended in one write and flushed to the disk before the next one starts. A run
killed at any point leaves whole batches and at most one unfinished batch behind, whose lines
(and a torn last line) `open_journal` cuts off and counts; that batch is detected again, with the
same images as in an uninterrupted run (a network's output may change in its last bits with the
batch it is computed in). A resumed run thus writes a submission byte-identical to an
uninterrupted one. A journal written for another model, batch size or set of files is an error,
never mixed into the submission.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinanet.config import Config, to_dict
from retinanet.errors import UserError
from retinanet.runtime.safe_writes import append_line, write_failure, write_text_atomically

JOURNAL = "detections.jsonl"
FORMAT = "retinanet infer detections, version 1"
# The config sections that change what the network and its post-processing return.
INFERENCE_SECTIONS = ("preprocessing", "anchors", "model", "postprocessing")


class JournalError(UserError, ValueError):
    """A detections journal that cannot be resumed; the message names the file and the line."""


@dataclass(frozen=True)
class Resumed:
    """What `open_journal` found: the entries of whole batches, and the lines it cut off."""

    entries: list[dict]
    torn_lines: int  # a last line without its newline: 0 or 1
    unfinished_lines: int  # whole lines of a batch whose other lines never came


def model_fingerprint(config: Config, models) -> str:
    """sha256 of the inference config sections, the precision, and every weight of every model."""
    digest = hashlib.sha256()
    sections = to_dict(config)
    settings = {section: sections[section] for section in INFERENCE_SECTIONS}
    settings["mixed_precision"] = config.runtime.mixed_precision
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for model in models:
        for weight in model.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def journal_header(fingerprint: str, batch_size: int, patient_ids: list[str]) -> dict:
    names = hashlib.sha256("\n".join(patient_ids).encode()).hexdigest()
    return {"format": FORMAT, "model": fingerprint, "batch_size": batch_size, "num_images": len(patient_ids),
            "patient_ids_sha256": names}


def detection_entry(patient_id: str, result: dict) -> dict:
    """A `Detector` result (at threshold 0) -> a journal entry."""
    probability = result["image_probability"]
    return {"patientId": patient_id, "boxes": np.asarray(result["boxes"], np.float64).reshape(-1, 4).tolist(),
            "scores": np.asarray(result["scores"], np.float64).reshape(-1).tolist(),
            "image_probability": probability if probability is None or math.isfinite(probability) else None}


def unreadable_entry(patient_id: str, reason: str) -> dict:
    return {"patientId": patient_id, "unreadable": reason}


def _different(path: Path, found: dict, expected: dict) -> JournalError:
    if found.get("format") != FORMAT:
        what = f"its header is not a {FORMAT!r} header"
    elif found.get("model") != expected["model"]:
        what = "it holds the detections of other weights or another config"
    elif found.get("batch_size") != expected["batch_size"]:
        what = (f"it was written in batches of {found.get('batch_size')}, this run's are {expected['batch_size']} "
                f"(pass --batch-size {found.get('batch_size')} to resume it)")
    else:
        what = (f"it was written for another set of files ({found.get('num_images')} images, this directory has "
                f"{expected['num_images']})")
    return JournalError(f"{path}: cannot resume: {what}; choose another --output or delete {path} to start over")


def _check_entry(entry, path: Path, line: int, patient_id: str) -> None:
    where = f"{path}:{line}"
    if not isinstance(entry, dict) or entry.get("patientId") != patient_id:
        found = entry.get("patientId") if isinstance(entry, dict) else entry
        raise JournalError(f"{where}: expected the entry of patient {patient_id}, found {found!r}")
    if "unreadable" in entry:
        return
    boxes, scores = entry.get("boxes"), entry.get("scores")
    if not (isinstance(boxes, list) and isinstance(scores, list) and len(boxes) == len(scores)
            and all(isinstance(box, list) and len(box) == 4 for box in boxes)):
        raise JournalError(f"{where}: patient {patient_id}: expected lists of boxes (4 numbers each) and scores "
                           "of one length")


def open_journal(path: str | Path, header: dict, patient_ids: list[str]) -> Resumed:
    """Read the journal at `path` for resuming, cut it back to its whole batches and return them;
    a missing journal (or one killed while its header was written) is started with `header`.

    JournalError when its header differs from `header`, or a line before the last is not the
    entry of the file at its place (a journal damaged by other means than a kill).
    """
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    lines = data.split(b"\n")
    torn = int(lines[-1] != b"")  # the text after the last newline: a write cut short
    lines = lines[:-1]
    if not lines:
        write_text_atomically(path, json.dumps(header) + "\n")
        return Resumed([], torn, 0)
    try:
        found = json.loads(lines[0])
    except ValueError:
        raise JournalError(f"{path}:1: not a JSON header line; delete {path} to start over") from None
    if found != header:
        raise _different(path, found if isinstance(found, dict) else {}, header)
    entries = []
    for index, line in enumerate(lines[1:]):
        if index >= len(patient_ids):
            raise JournalError(f"{path}:{index + 2}: more lines than the {len(patient_ids)} images")
        try:
            entry = json.loads(line)
        except ValueError:
            raise JournalError(f"{path}:{index + 2}: not a JSON line (a damaged journal); delete {path} to "
                               "start over") from None
        _check_entry(entry, path, index + 2, patient_ids[index])
        entries.append(entry)
    batch_size = header["batch_size"]
    kept = len(entries) if len(entries) == len(patient_ids) else len(entries) // batch_size * batch_size
    if kept < len(entries) or torn:
        end = sum(len(line) + 1 for line in lines[:kept + 1])
        try:
            os.truncate(path, end)
        except OSError as error:
            raise write_failure(path, error) from error
    return Resumed(entries[:kept], torn, len(entries) - kept)


def append_batch(path: str | Path, entries: list[dict]) -> None:
    """Append one batch's entries in one write, on the disk when it returns (FileWriteError if not)."""
    append_line(path, "\n".join(json.dumps(entry) for entry in entries), durable=True)
