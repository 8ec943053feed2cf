"""RSNA label CSVs -> validated per-patient records, and patient-level fold splits.

Boxes become `x1, y1, x2, y2` in original pixels here, at the edge of the package.
Every problem found names the file and the CSV line (the header is line 1). The CSVs may be
compressed (`.zip` holding one CSV, `.gz`, ...: pandas infers it from the name).
"""

from __future__ import annotations

import gzip
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from retinanet.config import BAD_FILE_POLICIES
from retinanet.data.patient_ids import check_patient_id, describe_problem
from retinanet.errors import UserError
from retinanet.runtime.safe_writes import make_directory, replace_atomically

LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
SPLIT_COLUMNS = ("patientId", "fold")  # make_folds writes Target (and ViewPosition) between them
CLASS_NAMES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
LUNG_OPACITY = CLASS_NAMES[0]  # the class of every positive patient


class LabelError(UserError, ValueError):
    """A labels or class CSV that breaks the RSNA format."""


@dataclass(frozen=True)
class Record:
    """One patient: its image file and its boxes [N, 4] (`x1, y1, x2, y2`, original pixels)."""

    patient_id: str
    image_path: str
    boxes: np.ndarray
    target: int
    class_name: str = ""  # "" where unknown: a negative patient read without the class CSV


@dataclass
class SkipReport:
    """Rows or files left out under the `skip` policy: (where, reason) pairs."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def __len__(self) -> int:
        return len(self.skipped)

    def write(self, path: str | Path) -> None:
        table = pd.DataFrame(self.skipped, columns=["where", "reason"])
        replace_atomically(path, lambda temporary: table.to_csv(temporary, index=False))


def read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A CSV (compressed or not) as strings, its header holding `columns`; LabelError naming the file otherwise."""
    if not path.is_file():
        raise LabelError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise LabelError(f"{path}: empty file (expected the header {','.join(columns)} and rows below it)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LabelError(f"{path}: not a readable CSV: {error}") from None
    except (zipfile.BadZipFile, gzip.BadGzipFile, EOFError, ValueError) as error:  # ValueError: a zip of several files
        raise LabelError(f"{path}: not a readable compressed CSV: {error}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise LabelError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})")
    if frame.empty:
        raise LabelError(f"{path}: no rows below the header")
    return frame


def _parse_row(row, image_size: float) -> tuple[np.ndarray | None, int]:
    """One label row -> (box or None, target); raises ValueError with the reason."""
    target_text = row["Target"].strip()
    if target_text not in ("0", "1"):
        raise ValueError(f"Target must be 0 or 1, got {target_text!r}")
    target = int(target_text)
    texts = [row[name].strip() for name in ("x", "y", "width", "height")]
    if not any(texts):
        if target == 1:
            raise ValueError("Target is 1 but the row has no box")
        return None, target
    if not all(texts):
        raise ValueError(f"incomplete box {texts}")
    try:
        x, y, width, height = (float(text) for text in texts)
    except ValueError:
        raise ValueError(f"non-numeric box value in {texts}") from None
    if not all(math.isfinite(v) for v in (x, y, width, height)):
        raise ValueError(f"non-finite box value in {texts}")
    if target == 0:
        raise ValueError("Target is 0 but the row has a box")
    if width <= 0 or height <= 0:
        raise ValueError(f"box size must be positive, got width {width}, height {height}")
    if x < 0 or y < 0 or x + width > image_size or y + height > image_size:
        raise ValueError(f"box ({x}, {y}, {width}, {height}) lies outside the {image_size:g} px image")
    return np.array([x, y, x + width, y + height], np.float32), target


@dataclass
class _Problems:
    """What read_labels does with a problem: raise it (policy "error"), or record it and leave the
    patient out (policy "skip")."""

    policy: str
    report: SkipReport = field(default_factory=SkipReport)
    bad_patients: set[str] = field(default_factory=set)

    def __call__(self, where: str, patient_id: str, reason: str) -> None:
        if self.policy == "error":
            raise LabelError(f"{where}: {reason}")
        self.report.add(where, reason)
        self.bad_patients.add(patient_id)

    def repeat(self, where: str, message: str) -> None:
        """A repeated row: only the repeat is left out under "skip"."""
        if self.policy == "error":
            raise LabelError(f"{where}: {message}")
        self.report.add(where, f"{message}; the repeat is left out")


def read_labels(
    labels_csv: str | Path,
    images_dir: str | Path | None = None,
    *,
    class_info_csv: str | Path | None = None,
    image_size: float = 1024,
    policy: str = "error",
    require_images: bool = True,
) -> tuple[list[Record], SkipReport]:
    """Parse and validate `stage_2_train_labels.csv` (and optionally the class CSV).

    Without the class CSV a positive patient's class is "Lung Opacity" (the only class with boxes)
    and a negative one's is unknown (""). With `images_dir`, each patient's `<patientId>.dcm` must
    exist unless `require_images` is False (the paths are still built: fitting anchors and
    splitting need the labels only). `policy` is "error"
    (raise LabelError on the first problem) or "skip" (leave the patient out, and record
    the file, line and reason in the returned SkipReport). A row repeating an earlier row of the
    same patient (the same box, or a second "no box" row) is a problem too; under "skip" only the
    repeat is left out. Records keep the CSV's order.
    """
    if policy not in BAD_FILE_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(BAD_FILE_POLICIES)}, got {policy!r}")
    problems = _Problems(policy)
    boxes, targets = _read_label_rows(Path(labels_csv), image_size, problems)
    classes = {} if class_info_csv is None else _read_classes(Path(class_info_csv), targets, problems)
    records = []
    for patient_id in boxes:
        if patient_id in problems.bad_patients:
            continue
        image_path = Path(images_dir) / f"{patient_id}.dcm" if images_dir is not None else Path(f"{patient_id}.dcm")
        if images_dir is not None and require_images and not image_path.is_file():
            problems(str(image_path), patient_id, f"image of patient {patient_id} not found")
            continue
        patient_boxes = np.stack(boxes[patient_id]) if boxes[patient_id] else np.zeros((0, 4), np.float32)
        target = max(targets[patient_id])
        class_name = classes.get(patient_id, LUNG_OPACITY if class_info_csv is None and target == 1 else "")
        records.append(Record(patient_id, str(image_path), patient_boxes, target, class_name))
    return records, problems.report


def _read_label_rows(labels_csv: Path, image_size: float,
                     problems: _Problems) -> tuple[dict[str, list[np.ndarray]], dict[str, set[int]]]:
    """The label file's rows -> ({patient: its boxes [4]}, {patient: the Targets of its rows}), in the
    file's order; every problem goes to `problems` with its line."""
    frame = read_table(labels_csv, LABEL_COLUMNS)
    boxes: dict[str, list[np.ndarray]] = {}
    targets: dict[str, set[int]] = {}
    first_line: dict[tuple, int] = {}  # (patient, target, box values) -> the line that gave it first
    for index, row in enumerate(frame.to_dict("records")):
        where = f"{labels_csv}:{index + 2}"
        patient_id = row["patientId"].strip()
        # The id becomes the image's and the cached file's name.
        bad_id = "empty patientId" if not patient_id else describe_problem(patient_id)
        if bad_id is not None:
            problems(where, patient_id, bad_id)
            continue
        try:
            box, target = _parse_row(row, image_size)
        except ValueError as error:
            problems(where, patient_id, str(error))
            continue
        # A repeated row would count its box twice: the metric then wants two predictions for it.
        key = (patient_id, target, None if box is None else tuple(box.tolist()))
        if key in first_line:
            problems.repeat(where, f"duplicate of line {first_line[key]} (patient {patient_id})")
            continue
        first_line[key] = index + 2
        boxes.setdefault(patient_id, [])
        targets.setdefault(patient_id, set()).add(target)
        if box is not None:
            boxes[patient_id].append(box)
    for patient_id, seen in targets.items():
        if len(seen) > 1:
            problems(f"{labels_csv}", patient_id, f"patient {patient_id} has rows with Target 0 and Target 1")
    return boxes, targets


def _read_classes(class_info_csv: Path, targets: dict[str, set[int]], problems: _Problems) -> dict[str, str]:
    """{patient: class} of the class file, checked against the labels' Targets."""
    classes: dict[str, str] = {}
    for index, row in enumerate(read_table(class_info_csv, CLASS_COLUMNS).to_dict("records")):
        where = f"{class_info_csv}:{index + 2}"
        patient_id, name = row["patientId"].strip(), row["class"].strip()
        bad_id = describe_problem(patient_id)
        if bad_id is not None:
            problems(where, patient_id, bad_id)
        elif name not in CLASS_NAMES:
            problems(where, patient_id, f"unknown class {name!r} (expected one of {', '.join(CLASS_NAMES)})")
        elif classes.setdefault(patient_id, name) != name:
            problems(where, patient_id, f"patient {patient_id} has classes {classes[patient_id]!r} and {name!r}")
    for patient_id, name in classes.items():
        if patient_id in targets and (name == "Lung Opacity") != (1 in targets[patient_id]):
            problems(str(class_info_csv), patient_id,
                     f"class {name!r} of {patient_id} contradicts its Target {max(targets[patient_id])}")
    return classes


def make_folds(records: list[Record], num_folds: int, seed: int,
               view_positions: dict[str, str] | None = None) -> pd.DataFrame:
    """Patient-level folds stratified by Target: DataFrame `patientId, Target, fold`.

    With `view_positions` ({patientId: "AP", "PA", ...}, every record's patient) the strata are
    (Target, view position) and the frame has a ViewPosition column after Target. Without it the
    folds are those of earlier versions for the same records and seed.
    """
    rng = np.random.default_rng(seed)
    rows = []
    views = sorted(set(view_positions.values())) if view_positions is not None else [None]
    # Deal each stratum round-robin, the count carrying over between strata: every fold gets
    # its share of each stratum and the fold sizes differ by at most one.
    dealt = 0
    for target in (0, 1):
        for view in views:
            patients = sorted(r.patient_id for r in records
                              if r.target == target and (view is None or view_positions[r.patient_id] == view))
            for i in rng.permutation(len(patients)):
                rows.append((patients[i], target, *([] if view is None else [view]), dealt % num_folds))
                dealt += 1
    columns = ["patientId", "Target", *([] if view_positions is None else ["ViewPosition"]), "fold"]
    return pd.DataFrame(rows, columns=columns).sort_values("patientId", ignore_index=True)


def _whole_number(text: str, column: str, where: str, allowed: tuple[str, ...] | None = None) -> int:
    """A cell of an integer column, checked; LabelError naming the line otherwise."""
    if not (text.isascii() and text.isdigit()) or (allowed is not None and text not in allowed):
        expected = " or ".join(allowed) if allowed is not None else "a whole number from 0 up"
        raise LabelError(f"{where}: {column} must be {expected}, got {text!r}")
    return int(text)


def read_split_file(path: str | Path) -> pd.DataFrame:
    """A split file as `make_folds` writes it (`patientId, [Target, ViewPosition,] fold`), checked:
    LabelError naming the file, and the line of a bad id, fold or Target or a patient listed twice."""
    path = Path(path)
    frame = read_table(path, SPLIT_COLUMNS)
    frame["patientId"] = frame["patientId"].str.strip()
    first_line: dict[str, int] = {}
    for index, patient_id in enumerate(frame["patientId"]):
        where = f"{path}:{index + 2}"
        check_patient_id(patient_id, where, LabelError)
        if patient_id in first_line:
            raise LabelError(f"{where}: patient {patient_id} is listed twice (first on line {first_line[patient_id]})")
        first_line[patient_id] = index + 2
    for column, allowed in (("Target", ("0", "1")), ("fold", None)):
        if column in frame.columns:
            frame[column] = np.array([_whole_number(text.strip(), column, f"{path}:{index + 2}", allowed)
                                      for index, text in enumerate(frame[column])], np.int64)
    return frame


def load_or_create_folds(records: list[Record], path: str | Path, num_folds: int, seed: int,
                         view_positions: dict[str, str] | None = None) -> pd.DataFrame:
    """Read the split file, or create and write it; the file's patients must match the records.

    An existing file wins over the seed and `view_positions` (`make_folds`' strata of a new file).
    """
    path = Path(path)
    if path.is_file():
        folds = read_split_file(path)
        missing = {r.patient_id for r in records} - set(folds["patientId"])
        if missing:
            raise LabelError(f"{path}: split file lacks {len(missing)} labelled patient(s), "
                             f"e.g. {sorted(missing)[0]}; delete it to create a new split")
        if folds["fold"].max() >= num_folds:
            raise LabelError(f"{path}: split file has {folds['fold'].max() + 1} folds, config asks for {num_folds}")
        return folds
    folds = make_folds(records, num_folds, seed, view_positions)
    make_directory(path.parent)
    replace_atomically(path, lambda temporary: folds.to_csv(temporary, index=False))
    return folds


def split_records(records: list[Record], folds: pd.DataFrame,
                  validation_fold: int) -> tuple[list[Record], list[Record]]:
    """(train, validation) records: validation is the patients of `validation_fold`."""
    fold_of = dict(zip(folds["patientId"], folds["fold"]))
    train = [r for r in records if fold_of[r.patient_id] != validation_fold]
    validation = [r for r in records if fold_of[r.patient_id] == validation_fold]
    return train, validation
