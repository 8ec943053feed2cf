"""Tests for retinanet.data.synthetic: RSNA layout and formats, DICOM headers, determinism, boxes."""

import csv
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage

from retinanet.data.dicom import read_dicom
from retinanet.data.phantom import LUNG_OPACITY, NORMAL, NOT_NORMAL, render_chest_radiograph
from retinanet.data.synthetic import SyntheticDataError, _class_counts, generate_synthetic_rsna

NUM_TRAIN, NUM_TEST, SIZE, SEED = 20, 4, 256, 3
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FLOAT_PATTERN = re.compile(r"^\d+\.0$")  # like the real '316.0'
REPOSITORY = Path(__file__).resolve().parents[1]


def _generate(out_dir, seed=SEED):
    return generate_synthetic_rsna(out_dir, num_train=NUM_TRAIN, num_test=NUM_TEST, size=SIZE, seed=seed,
                                   progress=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """(data root, warnings emitted while generating)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = _generate(tmp_path_factory.mktemp("synthetic"))
    return root, [str(warning.message) for warning in caught]


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def _label_table(path):
    """patientId -> list of (x, y, width, height) for positives, [] for negatives (format checked)."""
    rows = _rows(path)
    assert rows[0] == ["patientId", "x", "y", "width", "height", "Target"]
    boxes = {}
    for patient_id, *coordinates, target in rows[1:]:
        assert UUID_PATTERN.match(patient_id), patient_id
        if target == "0":
            assert coordinates == ["", "", "", ""]
            assert patient_id not in boxes  # a negative has exactly one row
            boxes[patient_id] = []
        else:
            assert target == "1" and all(FLOAT_PATTERN.match(value) for value in coordinates), coordinates
            assert boxes.get(patient_id, [None]), "a positive patient must not also have a negative row"
            boxes.setdefault(patient_id, []).append(tuple(float(value) for value in coordinates))
    return boxes


def test_layout_and_csv_formats(generated):
    root, _ = generated
    train = _label_table(root / "stage_2_train_labels.csv")
    test = _label_table(root / "stage_2_test_labels.csv")
    assert len(train) == NUM_TRAIN and len(test) == NUM_TEST
    assert not set(train) & set(test)
    assert sorted(path.stem for path in (root / "stage_2_train_images").glob("*.dcm")) == sorted(train)
    assert sorted(path.stem for path in (root / "stage_2_test_images").glob("*.dcm")) == sorted(test)
    assert sum(bool(boxes) for boxes in train.values()) == 5  # 22.5 % of 20, rounded
    assert sum(bool(boxes) for boxes in test.values()) == 1  # the test truth has positives too
    assert all(1 <= len(boxes) <= 3 for boxes in train.values() if boxes)

    label_rows = _rows(root / "stage_2_train_labels.csv")
    class_rows = _rows(root / "stage_2_detailed_class_info.csv")
    assert class_rows[0] == ["patientId", "class"]
    assert [row[0] for row in class_rows[1:]] == [row[0] for row in label_rows[1:]]  # one per label row
    classes = dict(class_rows[1:])
    assert set(classes.values()) == {LUNG_OPACITY, NOT_NORMAL, NORMAL}
    assert all((classes[patient_id] == LUNG_OPACITY) == bool(boxes) for patient_id, boxes in train.items())
    assert list(classes.values()).count(NOT_NORMAL) == 9  # 44.3 % of 20, rounded

    submission = _rows(root / "stage_2_sample_submission.csv")
    assert submission[0] == ["patientId", "PredictionString"]
    assert sorted(row[0] for row in submission[1:]) == sorted(test)
    assert all(row[1] == "0.5 0 0 100 100" for row in submission[1:])


def test_dicom_headers_are_rsna_like(generated):
    root, generation_warnings = generated
    assert generation_warnings == []  # writing PatientAge '51' must not warn
    paths = sorted(root.glob("stage_2_*_images/*.dcm"))
    assert len(paths) == NUM_TRAIN + NUM_TEST
    for path in paths[:6]:
        dataset = pydicom.dcmread(path)
        assert dataset.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert dataset.SOPClassUID == SecondaryCaptureImageStorage
        assert dataset.PhotometricInterpretation == "MONOCHROME2" and dataset.SamplesPerPixel == 1
        assert (dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation) == (8, 8, 7, 0)
        assert (dataset.Rows, dataset.Columns) == (SIZE, SIZE)
        assert dataset.Modality == "CR" and dataset.BodyPartExamined == "CHEST" and dataset.ConversionType == "WSD"
        assert dataset.ViewPosition in ("PA", "AP") and dataset.PatientSex in ("M", "F")
        assert re.fullmatch(r"\d{1,2}", dataset.PatientAge)  # bare number, exactly like RSNA
        assert dataset.PatientID == path.stem == str(dataset.PatientName)
        assert len({dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID}) == 3
        np.testing.assert_array_equal(read_dicom(path), dataset.pixel_array)


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    root, _ = generated
    again = _generate(tmp_path / "again")
    for path in sorted(root.rglob("*.*")):
        assert (again / path.relative_to(root)).read_bytes() == path.read_bytes(), path.name
    other = _generate(tmp_path / "other", seed=SEED + 1)
    assert (other / "stage_2_train_labels.csv").read_bytes() != (root / "stage_2_train_labels.csv").read_bytes()


def test_boxes_lie_inside_the_image_and_the_opacity_is_bright(generated):
    root, _ = generated
    boxes = _label_table(root / "stage_2_train_labels.csv")
    images = {patient_id: read_dicom(root / "stage_2_train_images" / f"{patient_id}.dcm") for patient_id in boxes}
    negative_images = np.stack([images[patient_id] for patient_id, patient_boxes in boxes.items() if not patient_boxes])
    for patient_id, patient_boxes in boxes.items():
        for x, y, width, height in patient_boxes:
            assert 0 <= x and 0 <= y and width > 0 and height > 0 and x + width <= SIZE and y + height <= SIZE
            box = np.s_[int(y):int(y + height), int(x):int(x + width)]
            # The same rectangle in negative images shows what the place looks like without opacity.
            contrast = images[patient_id][box].mean() - negative_images[(slice(None), *box)].mean()
            assert contrast > 20, (patient_id, contrast)


@pytest.mark.parametrize("seed", range(6))
def test_opacity_is_brighter_than_the_rest_of_the_lung(seed):
    radiograph = render_chest_radiograph(np.random.default_rng(seed), size=SIZE, class_name=LUNG_OPACITY)
    in_box = np.zeros((SIZE, SIZE), bool)
    for x, y, width, height in radiograph.boxes.astype(int):
        in_box[y:y + height, x:x + width] = True
    lung = radiograph.lung_mask
    contrast = radiograph.image[in_box & lung].mean() - radiograph.image[lung & ~in_box].mean()
    assert contrast > 25, contrast
    assert (in_box & lung).sum() > 0.6 * in_box.sum()  # the opacity lies in the lung


def test_box_statistics_are_rsna_like():
    size = 128
    boxes = np.concatenate([
        render_chest_radiograph(np.random.default_rng(seed), size=size, class_name=LUNG_OPACITY).boxes
        for seed in range(150)
    ]) * (1024 / size)
    width_median, height_median = np.median(boxes[:, 2]), np.median(boxes[:, 3])
    assert 170 < width_median < 260 and 220 < height_median < 360, (width_median, height_median)
    assert np.median(boxes[:, 3] / boxes[:, 2]) > 1.0  # tall boxes


def test_negatives_have_no_boxes_and_classes_are_checked():
    for class_name in (NOT_NORMAL, NORMAL):
        radiograph = render_chest_radiograph(np.random.default_rng(1), size=64, class_name=class_name)
        assert radiograph.boxes.shape == (0, 4) and radiograph.image.shape == (64, 64)
    with pytest.raises(ValueError, match="unknown class"):
        render_chest_radiograph(np.random.default_rng(1), size=64, class_name="Pneumonia")


def test_class_counts_follow_rsna_proportions():
    assert _class_counts(400) == {LUNG_OPACITY: 90, NOT_NORMAL: 177, NORMAL: 133}
    assert _class_counts(1) == {LUNG_OPACITY: 0, NOT_NORMAL: 0, NORMAL: 1}


def test_refuses_a_folder_holding_another_data_set(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_images" / "someone-else.dcm").write_bytes(b"")
    with pytest.raises(SyntheticDataError, match="someone-else.dcm"):
        generate_synthetic_rsna(tmp_path, num_train=2, num_test=0, size=64, progress=False)
    with pytest.raises(ValueError, match="size"):
        generate_synthetic_rsna(tmp_path / "small", num_train=2, num_test=0, size=16, progress=False)


def test_command_line_script(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "scripts" / "make_synthetic.py"), "--out", str(tmp_path / "cli"),
         "--num-train", "3", "--num-test", "1", "--size", "64", "--seed", "5", "--no-progress"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert len(_rows(tmp_path / "cli" / "stage_2_train_labels.csv")) >= 4
    assert len(list((tmp_path / "cli" / "stage_2_test_images").glob("*.dcm"))) == 1


def blocked_by_a_file(tmp_path: Path) -> tuple[Path, str]:
    """An --out below a regular file: no directory can be made there, not even by root."""
    (tmp_path / "notes.txt").write_text("a file, not a directory")
    return tmp_path / "notes.txt" / "synthetic", str(tmp_path / "notes.txt" / "synthetic")


def blocked_at_the_labels(tmp_path: Path) -> tuple[Path, str]:
    """The images are written, then the labels file cannot be: a directory holds its name."""
    (tmp_path / "out" / "stage_2_train_labels.csv").mkdir(parents=True)
    return tmp_path / "out", str(tmp_path / "out" / "stage_2_train_labels.csv")


def blocked_in_proc(tmp_path: Path) -> tuple[Path, str]:
    """A file system where nobody may create a directory."""
    return Path("/proc/synthetic-rsna"), "/proc/synthetic-rsna"


@pytest.mark.parametrize("blocked", [blocked_by_a_file, blocked_at_the_labels, blocked_in_proc])
def test_an_unwritable_output_is_a_named_error(blocked, tmp_path, script, clean_error):
    out, named_path = blocked(tmp_path)
    completed = script("make_synthetic.py", "--out", out, "--num-train", "2", "--num-test", "0", "--size", "64",
                       "--no-progress")
    clean_error(completed, f"cannot write {named_path}")
