"""Label CSV validation, skip policy and the patient-level split."""

from pathlib import Path

import numpy as np
import pytest

from retinanet.data.rsna import LabelError, load_or_create_folds, make_folds, read_labels, split_records

HEADER = "patientId,x,y,width,height,Target\n"
CLASS_HEADER = "patientId,class\n"


def write_dataset(directory: Path, label_rows: list[str], class_rows: list[str] | None = None,
                  images: tuple[str, ...] = ("a", "b", "c")) -> tuple[Path, Path, Path]:
    labels = directory / "labels.csv"
    labels.write_text(HEADER + "".join(row + "\n" for row in label_rows))
    classes = directory / "classes.csv"
    classes.write_text(CLASS_HEADER + "".join(row + "\n" for row in (class_rows or [])))
    images_dir = directory / "images"
    images_dir.mkdir(exist_ok=True)
    for patient in images:
        (images_dir / f"{patient}.dcm").write_bytes(b"")
    return labels, classes, images_dir


GOOD_ROWS = ["a,,,,,0", "b,100.0,200.0,50.0,80.0,1", "b,300.0,210.0,40.0,90.0,1", "c,,,,,0"]
GOOD_CLASSES = ["a,Normal", "b,Lung Opacity", "b,Lung Opacity", "c,No Lung Opacity / Not Normal"]


def test_reads_boxes_as_corners_and_groups_rows_by_patient(tmp_path):
    labels, classes, images = write_dataset(tmp_path, GOOD_ROWS, GOOD_CLASSES)
    records, report = read_labels(labels, images, class_info_csv=classes)
    assert len(report) == 0
    assert [r.patient_id for r in records] == ["a", "b", "c"]
    by_id = {r.patient_id: r for r in records}
    np.testing.assert_array_equal(by_id["b"].boxes, [[100, 200, 150, 280], [300, 210, 340, 300]])
    assert by_id["a"].boxes.shape == (0, 4) and by_id["a"].target == 0
    assert by_id["b"].target == 1 and by_id["b"].class_name == "Lung Opacity"
    assert by_id["c"].class_name == "No Lung Opacity / Not Normal"
    assert by_id["b"].image_path == str(images / "b.dcm")


@pytest.mark.parametrize("row, line, reason", [
    ("b,abc,200.0,50.0,80.0,1", 3, "non-numeric"),
    ("b,100.0,200.0,0.0,80.0,1", 3, "size must be positive"),
    ("b,100.0,200.0,-5.0,80.0,1", 3, "size must be positive"),
    ("b,1000.0,200.0,50.0,80.0,1", 3, "outside"),
    ("b,100.0,200.0,50.0,80.0,0", 3, "Target is 0 but the row has a box"),
    ("b,,,,,1", 3, "Target is 1 but the row has no box"),
    ("b,100.0,200.0,50.0,80.0,2", 3, "Target must be 0 or 1"),
    ("b,100.0,,50.0,80.0,1", 3, "incomplete box"),
])
def test_bad_rows_name_file_line_and_reason(tmp_path, row, line, reason):
    labels, _, images = write_dataset(tmp_path, ["a,,,,,0", row])
    with pytest.raises(LabelError) as error:
        read_labels(labels, images)
    assert f"{labels}:{line}" in str(error.value)
    assert reason in str(error.value)


def test_missing_column_is_named(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patientId,x,y,width,Target\na,,,,0\n")
    with pytest.raises(LabelError, match="missing column.*height"):
        read_labels(labels)


def test_missing_image_is_an_error_naming_the_file(tmp_path):
    labels, _, images = write_dataset(tmp_path, GOOD_ROWS, images=("a", "b"))
    with pytest.raises(LabelError, match=r"c\.dcm"):
        read_labels(labels, images)


def test_patient_with_contradicting_targets_is_an_error(tmp_path):
    labels, _, images = write_dataset(tmp_path, ["b,,,,,0", "b,100.0,200.0,50.0,80.0,1"])
    with pytest.raises(LabelError, match="Target 0 and Target 1"):
        read_labels(labels, images)


def test_class_that_contradicts_target_is_an_error(tmp_path):
    labels, classes, images = write_dataset(tmp_path, GOOD_ROWS, ["a,Lung Opacity"] + GOOD_CLASSES[1:])
    with pytest.raises(LabelError, match=f"{classes}.*contradicts"):
        read_labels(labels, images, class_info_csv=classes)


def test_unknown_class_names_the_line(tmp_path):
    labels, classes, images = write_dataset(tmp_path, GOOD_ROWS, ["a,Healthy"] + GOOD_CLASSES[1:])
    with pytest.raises(LabelError, match=f"{classes}:2.*unknown class"):
        read_labels(labels, images, class_info_csv=classes)


def test_skip_policy_counts_and_reports_instead_of_raising(tmp_path):
    rows = GOOD_ROWS + ["d,5.0,5.0,-1.0,9.0,1", "e,,,,,0"]
    labels, _, images = write_dataset(tmp_path, rows, images=("a", "b", "c", "d"))
    records, report = read_labels(labels, images, policy="skip")
    assert [r.patient_id for r in records] == ["a", "b", "c"]
    assert len(report) == 2
    reasons = " ".join(reason for _, reason in report.skipped)
    assert "size must be positive" in reasons and "e not found" in reasons
    report.write(tmp_path / "skipped.csv")
    assert len((tmp_path / "skipped.csv").read_text().splitlines()) == 3


def _records(num_negative: int, num_positive: int):
    from retinanet.data.rsna import Record

    return ([Record(f"n{i:03d}", "", np.zeros((0, 4), np.float32), 0) for i in range(num_negative)]
            + [Record(f"p{i:03d}", "", np.ones((1, 4), np.float32), 1) for i in range(num_positive)])


def test_folds_are_stratified_patient_level_and_seeded():
    records = _records(78, 22)
    folds = make_folds(records, 5, seed=1)
    assert sorted(folds["patientId"]) == sorted(r.patient_id for r in records)
    for fold in range(5):
        members = folds[folds["fold"] == fold]
        assert len(members) == 20
        assert members["Target"].sum() in (4, 5)  # 22 positives over 5 folds
    assert folds.equals(make_folds(records, 5, seed=1))
    assert not folds.equals(make_folds(records, 5, seed=2))


def test_split_file_is_written_once_and_reused(tmp_path):
    records = _records(30, 10)
    path = tmp_path / "splits" / "folds.csv"
    first = load_or_create_folds(records, path, 5, seed=0)
    assert path.is_file()
    again = load_or_create_folds(records, path, 5, seed=99)  # the file wins over the seed
    assert again["fold"].tolist() == first["fold"].tolist()
    train, validation = split_records(records, again, validation_fold=2)
    assert len(train) + len(validation) == 40
    assert not {r.patient_id for r in train} & {r.patient_id for r in validation}


def test_split_file_missing_patients_is_an_error(tmp_path):
    path = tmp_path / "folds.csv"
    load_or_create_folds(_records(10, 5), path, 5, seed=0)
    with pytest.raises(LabelError, match="lacks 1 labelled patient"):
        load_or_create_folds(_records(11, 5), path, 5, seed=0)
