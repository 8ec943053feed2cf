"""A synthetic data set in the exact RSNA Kaggle layout, for tests, demos and smoke training.

`generate_synthetic_rsna` writes the stage 2 CSVs and JPEG Baseline DICOMs (the layout of docs/data.md) of
the phantom radiographs of `retinanet.synthetic.phantom`, with RSNA-like headers. Everything
derives from one seed, so the same arguments give the same bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage
from tqdm import tqdm

from retinanet.config import Config
from retinanet.data.patient_ids import check_patient_id
from retinanet.data.rsna import CLASS_COLUMNS, LABEL_COLUMNS
from retinanet.data.submission import HEADER as SUBMISSION_COLUMNS
from retinanet.errors import UserError
from retinanet.runtime.hardware import available_cores
from retinanet.runtime.safe_writes import FileWriteError, make_directory, replace_atomically
from retinanet.synthetic.geometry import REAL_SIZE, sample_patients
from retinanet.synthetic.phantom import DIFFICULTIES, LUNG_OPACITY, NORMAL, NOT_NORMAL, render_chest_radiograph

# Fractions of all images in the stage 2 train set: 6,012 / 11,821 / 8,851 of 26,684.
CLASS_FRACTIONS = {LUNG_OPACITY: 0.225, NOT_NORMAL: 0.443}

SAMPLE_PREDICTION = "0.5 0 0 100 100"  # what every row of the real sample submission holds

JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class _PlannedImage:
    """Everything about one file that is drawn from the master random generator."""

    patient_id: str
    class_name: str
    image_seed: int
    sex: str
    age: int
    view_position: str
    study_uid: str
    series_uid: str
    sop_uid: str
    spacing: float  # mm at 1024 px
    boxes: np.ndarray  # [N, 4] x, y, width, height at 1024 px: a real patient's box set


def _random_uid(rng: np.random.Generator) -> str:
    """A UID under the UUID-derived root 2.25 (no registered root needed), from the seeded rng."""
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


def _class_counts(num_images: int) -> dict[str, int]:
    """Per-class image counts in the RSNA proportions (rounded half up; Normal takes the rest)."""
    positives = int(num_images * CLASS_FRACTIONS[LUNG_OPACITY] + 0.5)
    not_normal = min(int(num_images * CLASS_FRACTIONS[NOT_NORMAL] + 0.5), num_images - positives)
    return {LUNG_OPACITY: positives, NOT_NORMAL: not_normal, NORMAL: num_images - positives - not_normal}


def _plan_split(rng: np.random.Generator, num_images: int, used_ids: set[str]) -> list[_PlannedImage]:
    """Classes (exact proportions, shuffled), patient ids, per-image seeds, and each patient's view,
    age, sex, pixel spacing and boxes from a real patient of that class (`retinanet.synthetic.geometry`)."""
    counts = _class_counts(num_images)
    positives = sample_patients(rng, counts[LUNG_OPACITY], positive=True)
    negatives = sample_patients(rng, num_images - counts[LUNG_OPACITY], positive=False)
    patients = iter(positives + negatives)  # in the order of the classes below
    classes = [name for name, count in counts.items() for _ in range(count)]
    planned = [(class_name, next(patients)) for class_name in classes]
    planned = [planned[index] for index in rng.permutation(num_images)]
    result = []
    for class_name, patient in planned:
        patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        while patient_id in used_ids:  # 122 random bits: never in practice, but ids must be unique
            patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        used_ids.add(patient_id)
        result.append(_PlannedImage(
            patient_id=patient_id,
            class_name=class_name,
            image_seed=int(rng.integers(0, 2**63 - 1)),
            sex=patient.sex,
            age=patient.age,
            view_position=patient.view,
            study_uid=_random_uid(rng),
            series_uid=_random_uid(rng),
            sop_uid=_random_uid(rng),
            spacing=patient.spacing,
            boxes=patient.boxes,
        ))
    return result


def write_rsna_dicom(path, image: np.ndarray, planned: _PlannedImage) -> None:
    """Write uint8 [S, S] `image` as an RSNA-style JPEG Baseline Secondary Capture DICOM, whole
    or not at all (FileWriteError naming `path`)."""
    encoded_ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not encoded_ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode the image for {path}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = planned.sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit

    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = planned.sop_uid
    dataset.StudyDate = "19010101"  # the RSNA files carry these placeholder dates
    dataset.StudyTime = "000000.00"
    dataset.AccessionNumber = ""
    dataset.Modality = "CR"
    dataset.ConversionType = "WSD"
    dataset.ReferringPhysicianName = ""
    dataset.SeriesDescription = f"view: {planned.view_position}"
    dataset.PatientName = planned.patient_id
    dataset.PatientID = planned.patient_id
    dataset.PatientBirthDate = ""
    dataset.PatientSex = planned.sex
    # RSNA writes the age as a bare number ('51'), invalid for VR AS ('051Y'); written as-is,
    # with validation off for this one element so that writing prints no warning.
    dataset.add(DataElement(0x00101010, "AS", str(planned.age), validation_mode=pydicom_config.IGNORE))
    dataset.BodyPartExamined = "CHEST"
    dataset.ViewPosition = planned.view_position
    dataset.StudyInstanceUID = planned.study_uid
    dataset.SeriesInstanceUID = planned.series_uid
    dataset.StudyID = ""
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = 1
    dataset.PatientOrientation = ""
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = image.shape
    spacing = f"{planned.spacing * 1024 / image.shape[0]:.6g}"  # a smaller picture has larger pixels
    dataset.PixelSpacing = [spacing, spacing]
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionMethod = "ISO_10918_1"
    dataset.add(DataElement(0x7FE00010, "OB", encapsulate([encoded.tobytes()]), is_undefined_length=True))
    replace_atomically(path, lambda temporary: pydicom.dcmwrite(temporary, dataset, enforce_file_format=True))


def _label_rows(patient_id: str, boxes: np.ndarray) -> list[list[str]]:
    """`patientId,x,y,width,height,Target` rows: one per box, or one empty row for a negative."""
    if len(boxes) == 0:
        return [[patient_id, "", "", "", "", "0"]]
    return [[patient_id, *(f"{float(value):.1f}" for value in box), "1"] for box in boxes]


def _write_csv(path: Path, header, rows) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

    replace_atomically(path, write)


class SyntheticDataError(UserError, ValueError):
    """Synthetic data that cannot be made as asked: impossible sizes, or an output directory
    holding another data set's images."""


def _check_no_stale_images(folder: Path, planned: list[_PlannedImage]) -> None:
    """Refuse to mix this set with DICOMs of another one (a loader may glob the folder)."""
    expected = {f"{item.patient_id}.dcm" for item in planned}
    stale = sorted(path.name for path in folder.glob("*.dcm") if path.name not in expected)
    if stale:
        raise SyntheticDataError(
            f"{folder} already holds {len(stale)} DICOM file(s) of another data set (e.g. {stale[0]}); "
            "choose an empty output directory"
        )


def image_file(folder: Path, patient_id: str) -> Path:
    """`<folder>/<patient_id>.dcm`; an id that would name a file elsewhere is a SyntheticDataError."""
    return folder / f"{check_patient_id(patient_id, str(folder), SyntheticDataError)}.dcm"


def _render_and_write(task) -> None:
    item, path, size, difficulty = task
    radiograph = render_chest_radiograph(np.random.default_rng(item.image_seed), size=size, class_name=item.class_name,
                                         boxes=item.boxes, view=item.view_position, age=min(item.age, 100),
                                         difficulty=difficulty)
    write_rsna_dicom(path, radiograph.image, item)


def _write_images(tasks: list, *, workers: int, progress: bool) -> None:
    """Render and write every (planned image, path, size, difficulty) task in `workers` processes (0: one per
    available core). Each image derives from its own seed: the bytes do not depend on `workers`."""
    workers = workers or available_cores()
    with tqdm(total=len(tasks), desc="synthetic RSNA", unit="image", disable=not progress) as bar:
        if workers == 1 or len(tasks) < 4 * workers:
            for task in tasks:
                _render_and_write(task)
                bar.update(1)
            return
        # spawn: the caller may hold TensorFlow's threads, which a forked child must not inherit.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_render_and_write, tasks, chunksize=4):
                bar.update(1)


def generate_synthetic_rsna(out_dir, *, num_train: int, num_test: int, size: int = 1024, seed: int = 0,
                            difficulty: str = "default", progress: bool = True, workers: int = 0) -> Path:
    """Write a synthetic RSNA stage 2 data set into `out_dir` and return it as a Path.

    Files: stage_2_train_labels.csv, stage_2_detailed_class_info.csv,
    stage_2_train_images/<patientId>.dcm, stage_2_test_images/<patientId>.dcm,
    stage_2_sample_submission.csv and the test truth stage_2_test_labels.csv. Boxes are in
    pixels of the `size` x `size` images. Classes follow the RSNA proportions in both splits
    (22.5 % Lung Opacity, 44.3 % No Lung Opacity / Not Normal, the rest Normal). `difficulty`
    (a name of `retinanet.synthetic.phantom.DIFFICULTIES`) sets how faint and vague the opacities
    are; the patients, their boxes and anatomy are the same at every level. Images are written by
    `workers` processes (0: one per available core).
    """
    if difficulty not in DIFFICULTIES:
        raise SyntheticDataError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if num_train < 0 or num_test < 0:
        raise SyntheticDataError(f"num_train and num_test must be >= 0, got {num_train} and {num_test}")
    if size < 64:
        raise SyntheticDataError(f"size must be at least 64 pixels, got {size}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    used_ids: set[str] = set()
    splits = {
        "train": (_plan_split(rng, num_train, used_ids), out_dir / "stage_2_train_images"),
        "test": (_plan_split(rng, num_test, used_ids), out_dir / "stage_2_test_images"),
    }
    for planned, folder in splits.values():
        make_directory(folder)
        _check_no_stale_images(folder, planned)

    tasks = [(item, image_file(folder, item.patient_id), size, difficulty) for planned, folder in splits.values()
             for item in planned]
    _write_images(tasks, workers=workers, progress=progress)
    label_rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    class_rows: list[list[str]] = []
    for split, (planned, _) in splits.items():
        for item in planned:
            rows = _label_rows(item.patient_id, np.round(item.boxes * (size / REAL_SIZE)))  # as rendered
            label_rows[split].extend(rows)
            if split == "train":
                class_rows.extend([item.patient_id, item.class_name] for _ in rows)

    _write_csv(out_dir / "stage_2_train_labels.csv", LABEL_COLUMNS, label_rows["train"])
    _write_csv(out_dir / "stage_2_detailed_class_info.csv", CLASS_COLUMNS, class_rows)
    _write_csv(out_dir / "stage_2_test_labels.csv", LABEL_COLUMNS, label_rows["test"])
    _write_csv(out_dir / "stage_2_sample_submission.csv", SUBMISSION_COLUMNS,
               [[item.patient_id, SAMPLE_PREDICTION] for item in splits["test"][0]])
    return out_dir


def ensure_synthetic_data(config: Config, progress: bool = True) -> bool:
    """Generate the synthetic data set of `data.synthetic` into `data.root` when the config asks for
    one and its label file is missing (the demo's first run); True if it did. The commands that read
    the data call it first: nothing on the training path generates data."""
    root, synthetic = Path(config.data.root), config.data.synthetic
    if synthetic is None or (root / config.data.labels_csv).is_file():
        return False
    print(f"Generating the synthetic RSNA-format data set in {root} (first run only)")
    try:
        generate_synthetic_rsna(root, num_train=synthetic.num_train, num_test=synthetic.num_test,
                                size=synthetic.size, seed=synthetic.seed, difficulty=synthetic.difficulty,
                                progress=progress)
    except FileWriteError as error:  # a read-only or full disk, a path through a file
        raise FileWriteError(f"{error} (generating the synthetic data set of data.synthetic in data.root "
                             f"{root})") from error
    except OSError as error:  # foreign files in data.root
        raise FileWriteError(f"could not generate the synthetic data set (data.synthetic) in data.root {root}: "
                             f"{error.strerror or error} ({error.filename or root})") from error
    return True
