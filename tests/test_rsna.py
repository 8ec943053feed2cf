"""Label CSV validation, skip policy and the patient-level split."""

from pathlib import Path

import numpy as np
import pytest

from retinanet.data.rsna import LabelError, Record, load_or_create_folds, make_folds, read_labels, split_records

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


@pytest.mark.parametrize("repeat, first_line", [
    ("b,100,200,50,80,1", 3),  # the box of line 3 written differently: the same box
    ("a,,,,,0", 2),  # a second "no box" row
])
def test_duplicate_row_is_an_error_naming_both_lines(tmp_path, repeat, first_line):
    labels, _, images = write_dataset(tmp_path, GOOD_ROWS + [repeat])
    with pytest.raises(LabelError, match=rf"{labels}:6: duplicate of line {first_line} \(patient {repeat[0]}\)"):
        read_labels(labels, images)


def test_duplicate_row_under_skip_is_left_out_counted_and_listed(tmp_path):
    labels, _, images = write_dataset(tmp_path, GOOD_ROWS + ["b,100.0,200.0,50.0,80.0,1"])
    records, report = read_labels(labels, images, policy="skip")
    by_id = {r.patient_id: r for r in records}
    assert sorted(by_id) == ["a", "b", "c"]
    np.testing.assert_array_equal(by_id["b"].boxes, [[100, 200, 150, 280], [300, 210, 340, 300]])  # not 3 boxes
    assert report.skipped == [(f"{labels}:6", "duplicate of line 3 (patient b); the repeat is left out")]


def test_same_box_for_two_patients_is_not_a_duplicate(tmp_path):
    labels, _, images = write_dataset(tmp_path, ["a,100,200,50,80,1", "b,100,200,50,80,1"])
    records, report = read_labels(labels, images)
    assert [len(r.boxes) for r in records] == [1, 1] and len(report) == 0


@pytest.mark.parametrize("which", ["labels", "classes"])
@pytest.mark.parametrize("content, message", [("", "empty file"), (None, "no rows below the header")])
def test_empty_and_header_only_csvs_are_named_errors(tmp_path, which, content, message):
    labels, classes, images = write_dataset(tmp_path, GOOD_ROWS, GOOD_CLASSES)
    path = labels if which == "labels" else classes
    path.write_text(content if content is not None else path.read_text().splitlines()[0] + "\n")
    for policy in ("error", "skip"):
        with pytest.raises(LabelError, match=f"{path}: {message}"):
            read_labels(labels, images, class_info_csv=classes, policy=policy)


@pytest.mark.slow
@pytest.mark.parametrize("script_name", ["prepare_data.py", "train.py"])
@pytest.mark.parametrize("content, message", [("", "empty file"), (HEADER, "no rows below the header")])
def test_scripts_name_an_empty_or_header_only_labels_csv(tmp_path, script, clean_error, script_name, content,
                                                         message):
    labels, _, _ = write_dataset(tmp_path, GOOD_ROWS, GOOD_CLASSES)
    labels.write_text(content)
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    overrides = [f"data.root={tmp_path}", "data.labels_csv=labels.csv", "data.class_info_csv=classes.csv",
                 "data.train_images=images", "data.synthetic=null", f"data.cache_dir={tmp_path / 'cache'}"]
    arguments = ["--config", demo, *(f"--set={override}" for override in overrides)]
    if script_name == "train.py":
        arguments += ["--run-dir", tmp_path / "run", "--no-progress"]
    clean_error(script(script_name, *arguments), f"{labels}: {message}")


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


@pytest.mark.parametrize("content, where, message", [
    ("patientId,Target\na,0\n", "", "missing column(s) fold (found: patientId, Target)"),
    ("Target,fold\n0,0\n", "", "missing column(s) patientId (found: Target, fold)"),
    ("", "", "empty file (expected the header patientId,fold"),
    ("patientId,Target,fold\n", "", "no rows below the header"),
    ("patientId,Target,fold\na,0,0\nb,0,one\n", ":3", "fold must be a whole number from 0 up, got 'one'"),
    ("patientId,Target,fold\na,0,0\nb,0,1.5\n", ":3", "fold must be a whole number from 0 up, got '1.5'"),
    ("patientId,Target,fold\na,0,-1\nb,0,1\n", ":2", "fold must be a whole number from 0 up, got '-1'"),
    ("patientId,Target,fold\na,0,\nb,0,1\n", ":2", "fold must be a whole number from 0 up, got ''"),
    ("patientId,Target,fold\na,0,0\nb,0,1\na,0,1\n", ":4", "patient a is listed twice (first on line 2)"),
    ("patientId,Target,fold\na,0,0\nb,yes,1\n", ":3", "Target must be 0 or 1, got 'yes'"),
])
def test_bad_split_file_is_an_error_naming_file_and_line(tmp_path, content, where, message):
    path = tmp_path / "folds.csv"
    path.write_text(content)
    with pytest.raises(LabelError) as error:
        load_or_create_folds([Record(name, "", np.zeros((0, 4), np.float32), 0) for name in "ab"], path, 2, seed=0)
    assert str(error.value).startswith(f"{path}{where}: {message}")


def test_split_file_reads_back_as_written_with_whole_number_folds(tmp_path):
    from retinanet.data.rsna import read_split_file

    path = tmp_path / "folds.csv"
    path.write_text("patientId,Target,ViewPosition,fold\n a ,0,,1\nNA,1,AP,0\n")
    folds = read_split_file(path)
    assert folds["patientId"].tolist() == ["a", "NA"]  # "NA" is a name, not a missing value
    assert folds["fold"].tolist() == [1, 0] and folds["fold"].dtype == np.int64
    assert folds["ViewPosition"].tolist() == ["", "AP"]  # the unknown view's stratum


# --- the class CSV is optional; compressed CSVs ---------------------------------------------------


def test_without_class_csv_positives_are_lung_opacity_and_negatives_unknown(tmp_path):
    labels, _, images = write_dataset(tmp_path, GOOD_ROWS)
    records, report = read_labels(labels, images)
    assert len(report) == 0
    assert {r.patient_id: r.class_name for r in records} == {"a": "", "b": "Lung Opacity", "c": ""}


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.zip"])
def test_compressed_labels_read_as_the_plain_csv_and_errors_name_the_file(tmp_path, suffix):
    import pandas as pd

    labels, classes, images = write_dataset(tmp_path, GOOD_ROWS, GOOD_CLASSES)
    compressed = tmp_path / f"labels{suffix}"
    pd.read_csv(labels, dtype=str, keep_default_na=False).to_csv(compressed, index=False)
    plain, _ = read_labels(labels, images, class_info_csv=classes)
    packed, _ = read_labels(compressed, images, class_info_csv=classes)
    assert [(r.patient_id, r.target, r.class_name) for r in packed] == [(r.patient_id, r.target, r.class_name)
                                                                         for r in plain]
    np.testing.assert_array_equal(np.concatenate([r.boxes for r in packed]),
                                  np.concatenate([r.boxes for r in plain]))
    bad_row = tmp_path / f"bad_row{suffix}"
    pd.DataFrame([GOOD_ROWS[0].split(","), "b,1000.0,200.0,50.0,80.0,1".split(",")],
                 columns=HEADER.strip().split(",")).to_csv(bad_row, index=False)
    with pytest.raises(LabelError, match=rf"{bad_row}:3: .*outside"):
        read_labels(bad_row, images)
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(b"patientId,x,y,width,height,Target\n")  # not compressed at all
    with pytest.raises(LabelError, match=rf"{broken}: not a readable compressed CSV"):
        read_labels(broken, images)


def test_labels_without_images_when_images_are_not_required(tmp_path):
    labels, _, _ = write_dataset(tmp_path, GOOD_ROWS, images=())
    records, report = read_labels(labels, tmp_path / "images", require_images=False)
    assert len(report) == 0 and [r.patient_id for r in records] == ["a", "b", "c"]
    assert records[1].image_path == str(tmp_path / "images" / "b.dcm")
    with pytest.raises(LabelError, match=r"a\.dcm"):
        read_labels(labels, tmp_path / "images")


# --- folds stratified by view position -----------------------------------------------------------


def _viewed_records(counts: dict[tuple[int, str], int]):
    """Records and their view positions: `counts` {(target, view): patients}."""
    from retinanet.data.rsna import Record

    records, views = [], {}
    for (target, view), count in counts.items():
        for i in range(count):
            patient_id = f"{'pn'[target == 0]}{view}{i:03d}"
            records.append(Record(patient_id, "", np.ones((target, 4), np.float32), target))
            views[patient_id] = view
    return records, views


def test_folds_stratified_by_view_give_every_fold_its_share_of_each_stratum():
    counts = {(0, "AP"): 10, (0, "PA"): 20, (1, "AP"): 15, (1, "PA"): 5}
    records, views = _viewed_records(counts)
    folds = make_folds(records, 5, seed=3, view_positions=views)
    assert list(folds.columns) == ["patientId", "Target", "ViewPosition", "fold"]
    assert dict(zip(folds["patientId"], folds["ViewPosition"])) == views
    for fold in range(5):
        members = folds[folds["fold"] == fold]
        per_stratum = members.groupby(["Target", "ViewPosition"]).size().to_dict()
        assert per_stratum == {(0, "AP"): 2, (0, "PA"): 4, (1, "AP"): 3, (1, "PA"): 1}
    assert folds.equals(make_folds(records, 5, seed=3, view_positions=views))
    # Uneven strata: each fold within one of its share, the fold sizes within one of each other.
    records, views = _viewed_records({(0, "AP"): 7, (0, "PA"): 11, (1, "AP"): 6, (1, "PA"): 3})
    folds = make_folds(records, 4, seed=0, view_positions=views)
    sizes = folds.groupby("fold").size()
    assert sizes.max() - sizes.min() <= 1
    for (target, view), count in {(0, "AP"): 7, (0, "PA"): 11, (1, "AP"): 6, (1, "PA"): 3}.items():
        stratum = folds[(folds["Target"] == target) & (folds["ViewPosition"] == view)]
        assert set(stratum.groupby("fold").size().reindex(range(4), fill_value=0)) <= {count // 4, count // 4 + 1}


def test_folds_without_views_are_those_of_the_target_only_split():
    from retinanet.data.rsna import Record

    records = ([Record(f"n{i}", "", np.zeros((0, 4), np.float32), 0) for i in range(6)]
               + [Record(f"p{i}", "", np.ones((1, 4), np.float32), 1) for i in range(4)])
    folds = make_folds(records, 3, seed=7)
    assert list(folds.columns) == ["patientId", "Target", "fold"]
    # The assignment the Target-only split gave before view positions existed (split files stay valid).
    assert dict(zip(folds["patientId"], folds["fold"])) == {
        "n0": 2, "n1": 1, "n2": 1, "n3": 2, "n4": 0, "n5": 0, "p0": 0, "p1": 1, "p2": 2, "p3": 0}
    views = {record.patient_id: "AP" for record in records}
    assert make_folds(records, 3, seed=7, view_positions=views)["fold"].tolist() == folds["fold"].tolist()


def test_split_file_with_view_positions_is_reused_like_the_old_format(tmp_path):
    records, views = _viewed_records({(0, "AP"): 6, (0, "PA"): 6, (1, "AP"): 4, (1, "PA"): 4})
    path = tmp_path / "folds.csv"
    first = load_or_create_folds(records, path, 4, seed=0, view_positions=views)
    assert path.read_text().splitlines()[0] == "patientId,Target,ViewPosition,fold"
    again = load_or_create_folds(records, path, 4, seed=5)  # the file wins over the seed and the strata
    assert again.equals(first)
    train, validation = split_records(records, again, validation_fold=1)
    assert len(validation) == 5 and len(train) == 15
