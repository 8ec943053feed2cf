"""A full-size synthetic set for the real RSNA patients: their ids and label rows, phantom films.

`generate_from_real_labels` reads the challenge's real `stage_2_train_labels.csv` (or the .zip/.gz
holding it) and its DICOM-header table, takes the first `limit` patients of the label file (so a
smaller set is a subset of a larger one) and writes the RSNA layout:

- stage_2_train_labels.csv: exactly those patients' real rows, as the real file spells them;
- stage_2_detailed_class_info.csv: one row per label row; positives "Lung Opacity", negatives
  "No Lung Opacity / Not Normal" or "Normal", drawn in the real proportion (11,821 : 8,851);
- stage_2_train_images/<patientId>.dcm: a 1024 px JPEG DICOM per patient, the phantom of
  `retinanet.synthetic.phantom` drawn around the patient's real boxes, with its view, age, sex and
  pixel spacing from the header table.

Each patient's class, picture and UIDs derive from the seed and its id alone: the same patient is
the same file in every set. A run interrupted and run again in the same directory completes it:
the DICOMs are written atomically, so those present are whole and kept (`synthetic_settings.json`
records the seed, and another seed is refused rather than mixed in).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from retinanet.synthetic.geometry import REAL_SIZE
from retinanet.data.patient_ids import check_patient_id
from retinanet.synthetic.phantom import DIFFICULTIES, LUNG_OPACITY, NORMAL, NOT_NORMAL
from retinanet.data.rsna import CLASS_COLUMNS, LABEL_COLUMNS
from retinanet.synthetic.rsna_layout import (SyntheticDataError, _check_no_stale_images, _PlannedImage, _random_uid,
                                      _write_csv, _write_images, image_file)
from retinanet.runtime.safe_writes import make_directory, write_text_atomically

HEADER_COLUMNS = ("PatientID", "ViewPosition", "PatientAge", "PatientSex", "PixelSpacing")
NOT_NORMAL_SHARE = 11821 / (11821 + 8851)  # of the real negatives
SETTINGS_FILE = "synthetic_settings.json"


def _read_table(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise SyntheticDataError(f"{path}: {what} not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # the rows' text as it is
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as error:
        raise SyntheticDataError(f"{path}: not a readable {what}: {error}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SyntheticDataError(f"{path}: missing column(s) {', '.join(missing)} of the {what} "
                                 f"(found: {', '.join(map(str, frame.columns))})")
    return frame


def _check_ids(frame: pd.DataFrame, column: str, path: Path) -> None:
    """Every id of the table must be a file name (the label file's become `<id>.dcm`); the first bad
    one is a SyntheticDataError naming its line, before anything is written."""
    for index, patient_id in enumerate(frame[column]):
        check_patient_id(patient_id, f"{path}:{index + 2}", SyntheticDataError)


def _boxes(rows: pd.DataFrame, labels_csv: Path) -> np.ndarray:
    """The patient's positive rows -> float [N, 4] x, y, width, height (1024 px); errors name the line."""
    boxes = []
    for line, row in rows.iterrows():
        if row["Target"] != "1":
            continue
        try:
            boxes.append([float(row[name]) for name in ("x", "y", "width", "height")])
        except ValueError:
            raise SyntheticDataError(f"{labels_csv}:{line + 2}: a Target 1 row needs numbers in x, y, width and "
                                     f"height, got {[row[name] for name in ('x', 'y', 'width', 'height')]}") from None
    return np.array(boxes, np.float64).reshape(-1, 4)


def _patient_rng(seed: int, patient_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _plan_patient(seed: int, patient_id: str, boxes: np.ndarray, header) -> _PlannedImage:
    rng = _patient_rng(seed, patient_id)
    if len(boxes):
        class_name = LUNG_OPACITY
        rng.random()  # drawn for every patient, so that the draws below do not depend on the class
    else:
        class_name = NOT_NORMAL if rng.random() < NOT_NORMAL_SHARE else NORMAL
    return _PlannedImage(patient_id=patient_id, class_name=class_name, image_seed=int(rng.integers(0, 2**63 - 1)),
                         sex=header["PatientSex"], age=int(float(header["PatientAge"])),
                         view_position=header["ViewPosition"], study_uid=_random_uid(rng),
                         series_uid=_random_uid(rng), sop_uid=_random_uid(rng),
                         spacing=float(header["PixelSpacing"]), boxes=boxes)


def _check_settings(out_dir: Path, settings: dict) -> None:
    """Refuse to complete a set made with other settings; record them for a set begun now."""
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier != settings:
            raise SyntheticDataError(f"{out_dir} holds a set made with {earlier} ({path}), not {settings}; "
                                     "choose an empty output directory or the same settings")
    else:
        write_text_atomically(path, json.dumps(settings, sort_keys=True))


def generate_from_real_labels(out_dir, *, labels_csv, headers_csv, limit: int = 0, seed: int = 0,
                              difficulty: str = "default", progress: bool = True,
                              workers: int = 0) -> tuple[Path, int, int]:
    """Write the set of the first `limit` patients (0: all) of the real label file into `out_dir`,
    their opacities drawn at `difficulty` (`retinanet.synthetic.phantom.DIFFICULTIES`).

    Returns (out_dir, patients, images written now); images already present from an interrupted
    run of the same settings are kept. Images are written by `workers` processes (0: one per core).
    """
    if limit < 0:
        raise SyntheticDataError(f"limit must be >= 0 (0: all patients), got {limit}")
    if difficulty not in DIFFICULTIES:
        raise SyntheticDataError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    labels_csv, headers_csv, out_dir = Path(labels_csv), Path(headers_csv), Path(out_dir)
    labels = _read_table(labels_csv, LABEL_COLUMNS, "label file")
    _check_ids(labels, "patientId", labels_csv)
    patients = labels["patientId"].drop_duplicates()
    if limit:
        patients = patients.iloc[:limit]
    labels = labels[labels["patientId"].isin(set(patients))]
    headers = _read_table(headers_csv, HEADER_COLUMNS, "DICOM header table")
    _check_ids(headers, "PatientID", headers_csv)
    headers = headers.drop_duplicates("PatientID").set_index("PatientID")
    missing = patients[~patients.isin(headers.index)]
    if len(missing):
        raise SyntheticDataError(f"{headers_csv}: no header row for {len(missing)} patient(s) of {labels_csv} "
                                 f"(e.g. {missing.iloc[0]})")

    groups = labels.groupby("patientId", sort=False)
    planned = [_plan_patient(seed, patient_id, _boxes(groups.get_group(patient_id), labels_csv),
                             headers.loc[patient_id]) for patient_id in patients]
    folder = make_directory(out_dir / "stage_2_train_images")
    settings = {"seed": seed, "size": REAL_SIZE, "labels": labels_csv.name}
    if difficulty != "default":  # a set made before the levels existed records no difficulty
        settings["difficulty"] = difficulty
    _check_settings(out_dir, settings)
    for stale in folder.glob("*.tmp.dcm"):  # safe_writes.temporary_path's names, left by a kill mid-write
        stale.unlink()
    _check_no_stale_images(folder, planned)
    tasks = [(item, image_file(folder, item.patient_id), REAL_SIZE, difficulty) for item in planned]
    tasks = [task for task in tasks if not task[1].is_file()]
    _write_images(tasks, workers=workers, progress=progress)

    classes = {item.patient_id: item.class_name for item in planned}
    _write_csv(out_dir / "stage_2_train_labels.csv", LABEL_COLUMNS, labels[list(LABEL_COLUMNS)].to_numpy().tolist())
    _write_csv(out_dir / "stage_2_detailed_class_info.csv", CLASS_COLUMNS,
               [[patient_id, classes[patient_id]] for patient_id in labels["patientId"]])
    return out_dir, len(planned), len(tasks)
