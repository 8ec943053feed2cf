"""Tests for retinanet.synthetic.rsna_layout: RSNA layout and formats, DICOM headers, determinism, boxes."""

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
from retinanet.synthetic.geometry import geometry_table, sample_patients
from retinanet.synthetic.phantom import DIFFICULTIES, LUNG_OPACITY, NORMAL, NOT_NORMAL, render_chest_radiograph
from retinanet.synthetic.visibility import lung_rise_and_auc
from retinanet.synthetic.rsna_layout import SyntheticDataError, _class_counts, _plan_split, generate_synthetic_rsna

NUM_TRAIN, NUM_TEST, SIZE, SEED = 20, 4, 256, 3
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FLOAT_PATTERN = re.compile(r"^\d+\.0$")  # like the real '316.0'
REPOSITORY = Path(__file__).resolve().parents[1]


def _generate(out_dir, seed=SEED, workers=0):
    return generate_synthetic_rsna(out_dir, num_train=NUM_TRAIN, num_test=NUM_TEST, size=SIZE, seed=seed,
                                   progress=False, workers=workers)


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
    assert all(1 <= len(boxes) <= 4 for boxes in train.values() if boxes)

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
        assert re.fullmatch(r"\d{1,3}", dataset.PatientAge)  # bare number, exactly like RSNA
        assert dataset.PatientID == path.stem == str(dataset.PatientName)
        assert len({dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID}) == 3
        np.testing.assert_array_equal(read_dicom(path), dataset.pixel_array)


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    root, _ = generated  # written by two processes
    again = _generate(tmp_path / "again", workers=1)
    for path in sorted(root.rglob("*.*")):
        assert (again / path.relative_to(root)).read_bytes() == path.read_bytes(), path.name
    other = _generate(tmp_path / "other", seed=SEED + 1)
    assert (other / "stage_2_train_labels.csv").read_bytes() != (root / "stage_2_train_labels.csv").read_bytes()


def test_boxes_are_the_planned_real_boxes_scaled_and_inside_the_image(generated):
    root, _ = generated
    boxes = _label_table(root / "stage_2_train_labels.csv")
    planned = {item.patient_id: item for item in _plan_split(np.random.default_rng(SEED), NUM_TRAIN, set())}
    assert set(planned) == set(boxes)
    for patient_id, patient_boxes in boxes.items():
        expected = np.round(planned[patient_id].boxes * SIZE / 1024)
        np.testing.assert_array_equal(np.array(patient_boxes).reshape(-1, 4), expected)
        for x, y, width, height in patient_boxes:
            assert 0 <= x and 0 <= y and width > 0 and height > 0 and x + width <= SIZE and y + height <= SIZE


def test_opacities_are_faint_but_raise_the_lung_where_the_boxes_are():
    """Real box sets drawn on positives and used as probes on negatives of the same patients:
    the positives' box regions are brighter than the rest of the lung, the negatives' are not,
    and no single grey level separates opacity from lung (pixel AUC well below 1)."""
    rng = np.random.default_rng(0)
    positive, negative, aucs = [], [], []
    for index, patient in enumerate(sample_patients(rng, 24, positive=True)):
        settings = dict(size=128, view=patient.view, age=patient.age)
        radiograph = render_chest_radiograph(np.random.default_rng(index), class_name=LUNG_OPACITY,
                                             boxes=patient.boxes, **settings)
        z, auc = lung_rise_and_auc(radiograph, patient.boxes)
        positive.append(z)
        aucs.append(auc)
        assert np.all((0.2 < radiograph.contrast) & (radiograph.contrast < 2.0)), radiograph.contrast
        blank = render_chest_radiograph(np.random.default_rng(index), class_name=NORMAL, **settings)
        negative.append(lung_rise_and_auc(blank, patient.boxes)[0])
    assert np.mean(positive) - np.mean(negative) > 0.4, (np.mean(positive), np.mean(negative))
    assert abs(np.mean(negative)) < 0.25, negative
    assert 0.55 < np.median(aucs) < 0.85, np.median(aucs)


def test_planned_geometry_matches_the_real_table():
    """2,000 planned patients against the committed real table: boxes per patient, width, height
    and centre quantiles, AP/PA positive rates. Tolerances: about 3 standard errors of a
    2,000-patient sample (a quantile of ~700 boxes: 8 % of the size, 25 px of the centre;
    a rate: 4 points)."""
    planned = _plan_split(np.random.default_rng(1), 2000, set())
    table = geometry_table()
    real = [np.array(text.split(), float).reshape(-1, 4) for text in table["boxes"]]

    def shares(box_sets):
        counts = np.bincount([len(boxes) for boxes in box_sets if len(boxes)], minlength=5)[1:5]
        return counts / counts.sum()

    np.testing.assert_allclose(shares([item.boxes for item in planned]), shares(real), atol=0.04)
    ours, theirs = np.concatenate([item.boxes for item in planned]), np.concatenate([b for b in real if len(b)])
    quantiles = [0.1, 0.25, 0.5, 0.75, 0.9]
    for column in (2, 3):  # width, height
        np.testing.assert_allclose(np.quantile(ours[:, column], quantiles), np.quantile(theirs[:, column], quantiles),
                                   rtol=0.08)
    for axis in (0, 1):  # centre x, centre y
        np.testing.assert_allclose(np.quantile(ours[:, axis] + ours[:, axis + 2] / 2, quantiles),
                                   np.quantile(theirs[:, axis] + theirs[:, axis + 2] / 2, quantiles), atol=25)
    for view, real_rate in (("AP", 0.383), ("PA", 0.093)):
        rows = [item for item in planned if item.view_position == view]
        assert abs(np.mean([item.class_name == LUNG_OPACITY for item in rows]) - real_rate) < 0.04, view
    table_rates = table.groupby("view")["positive"].mean()
    assert abs(table_rates["AP"] - 0.383) < 0.001 and abs(table_rates["PA"] - 0.093) < 0.001


def test_children_have_smaller_chests():
    lung_area = {age: np.mean([render_chest_radiograph(np.random.default_rng(seed), size=64, class_name=NORMAL,
                                                       age=age).lung_mask.mean() for seed in range(4)])
                 for age in (3, 40)}
    assert lung_area[3] < 0.7 * lung_area[40], lung_area


def test_negatives_have_no_boxes_and_classes_are_checked():
    for class_name in (NOT_NORMAL, NORMAL):
        radiograph = render_chest_radiograph(np.random.default_rng(1), size=64, class_name=class_name)
        assert radiograph.boxes.shape == (0, 4) and radiograph.image.shape == (64, 64)
    with pytest.raises(ValueError, match="unknown class"):
        render_chest_radiograph(np.random.default_rng(1), size=64, class_name="Pneumonia")
    with pytest.raises(ValueError, match="only Lung Opacity has boxes"):
        render_chest_radiograph(np.random.default_rng(1), size=64, class_name=LUNG_OPACITY)
    with pytest.raises(ValueError, match="only Lung Opacity has boxes"):
        render_chest_radiograph(np.random.default_rng(1), size=64, class_name=NORMAL, boxes=[[10, 10, 50, 50]])
    with pytest.raises(ValueError, match="view"):
        render_chest_radiograph(np.random.default_rng(1), size=64, class_name=NORMAL, view="LL")


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


def test_synth_help_states_the_config_defaults():
    from retinanet.commands import synth
    from retinanet.commands.common import build_parser
    from retinanet.config import SyntheticConfig

    text = " ".join(build_parser(synth).format_help().split())
    defaults = SyntheticConfig()
    for name in ("num_train", "num_test", "size"):
        assert f"data.synthetic's {name}, {getattr(defaults, name)})" in text



def test_difficulty_levels_are_ordered_and_faint_is_below_the_default_tenth_percentile():
    from retinanet.synthetic.visibility import measure_visibility

    measured = {level: measure_visibility(level, patients=30, size=128) for level in ("default", "faint", "very_faint")}
    contrast = {level: values["contrast"] for level, values in measured.items()}  # p10, p50, p90
    auc = {level: values["pixel_auc"][1] for level, values in measured.items()}
    assert contrast["default"][1] > contrast["faint"][1] > contrast["very_faint"][1] > 0
    assert contrast["faint"][1] < contrast["default"][0]  # the faint median below the default 10th percentile
    assert auc["default"] > auc["faint"] > auc["very_faint"]
    assert 0.6 < auc["default"] < 0.8  # docs/data.md: 0.69 at the median


def test_a_difficulty_changes_the_opacities_only(tmp_path):
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    default = generate_synthetic_rsna(tmp_path / "default", num_train=12, num_test=0, size=128, seed=3,
                                      progress=False, workers=1)
    faint = generate_synthetic_rsna(tmp_path / "faint", num_train=12, num_test=0, size=128, seed=3,
                                    difficulty="faint", progress=False, workers=1)
    assert (default / "stage_2_train_labels.csv").read_bytes() == (faint / "stage_2_train_labels.csv").read_bytes()
    labels = (default / "stage_2_train_labels.csv").read_text().splitlines()[1:]
    positive = {line.split(",")[0] for line in labels if line.endswith(",1")}
    for path in sorted((default / "stage_2_train_images").glob("*.dcm")):
        same = pydicom.dcmread(path).pixel_array.tobytes() == pydicom.dcmread(
            faint / "stage_2_train_images" / path.name).pixel_array.tobytes()
        assert same == (path.stem not in positive), path.stem  # only films with opacities differ
    with pytest.raises(SyntheticDataError, match="difficulty must be one of default, faint, very_faint, varied"):
        generate_synthetic_rsna(tmp_path / "bad", num_train=2, num_test=0, size=128, difficulty="blurry",
                                progress=False)


def test_the_config_names_the_generators_difficulty_levels():
    from retinanet.config.schema import DIFFICULTIES as CONFIG_LEVELS

    assert tuple(DIFFICULTIES) == CONFIG_LEVELS
