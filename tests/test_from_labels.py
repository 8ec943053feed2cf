"""Tests for retinanet.synthetic.from_labels: a synthetic set for the patients of a real label file."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from helpers import REPOSITORY_ROOT
from retinanet.synthetic.from_labels import SETTINGS_FILE, generate_from_real_labels
from retinanet.data.rsna import read_labels
from retinanet.synthetic.rsna_layout import SyntheticDataError

# In the real file's spelling: empty fields for negatives, one decimal for the boxes.
LABELS = """patientId,x,y,width,height,Target
aaaa-1,,,,,0
bbbb-2,264.0,152.0,213.0,379.0,1
bbbb-2,562.0,152.0,256.0,453.0,1
cccc-3,,,,,0
dddd-4,323.0,577.0,160.0,104.0,1
eeee-5,,,,,0
"""
# The real table's layout: an unnamed index column first, a float PatientAge/PixelSpacing text.
HEADERS = """,BodyPartExamined,PatientAge,PatientID,PatientSex,PixelSpacing,ViewPosition
0,CHEST,61,eeee-5,M,0.143,PA
1,CHEST,7,cccc-3,F,0.139,AP
2,CHEST,51,aaaa-1,F,0.14300000000000002,PA
3,CHEST,148,bbbb-2,M,0.168,AP
4,CHEST,33,dddd-4,M,0.171,PA
5,CHEST,40,ffff-6,F,0.143,PA
"""


@pytest.fixture
def tables(tmp_path) -> tuple[Path, Path]:
    labels = tmp_path / "stage_2_train_labels.csv"
    labels.write_text(LABELS)
    headers = tmp_path / "headers.csv.gz"
    headers.write_bytes(gzip.compress(HEADERS.encode()))
    return labels, headers


def _generate(out_dir, tables, **kwargs):
    labels, headers = tables
    return generate_from_real_labels(out_dir, labels_csv=labels, headers_csv=headers, progress=False, workers=1,
                                     **kwargs)


def test_the_first_patients_with_their_real_rows_and_headers(tmp_path, tables):
    out_dir, patients, written = _generate(tmp_path / "set", tables, limit=3)
    assert (patients, written) == (3, 3)
    # Exactly the rows of the first three patients (aaaa-1, bbbb-2 twice, cccc-3), spelled as read.
    assert (out_dir / "stage_2_train_labels.csv").read_text() == "".join(LABELS.splitlines(True)[:5])
    classes = pd.read_csv(out_dir / "stage_2_detailed_class_info.csv")
    assert classes["patientId"].tolist() == ["aaaa-1", "bbbb-2", "bbbb-2", "cccc-3"]
    assert classes["class"].tolist()[1:3] == ["Lung Opacity", "Lung Opacity"]
    assert set(classes["class"].iloc[[0, 3]]) <= {"No Lung Opacity / Not Normal", "Normal"}
    images = sorted(path.name for path in (out_dir / "stage_2_train_images").iterdir())
    assert images == ["aaaa-1.dcm", "bbbb-2.dcm", "cccc-3.dcm"]

    dataset = pydicom.dcmread(out_dir / "stage_2_train_images" / "bbbb-2.dcm")
    assert (dataset.PatientID, dataset.ViewPosition, dataset.PatientSex, str(dataset.PatientAge)) == (
        "bbbb-2", "AP", "M", "148")
    assert (dataset.Rows, dataset.Columns) == (1024, 1024)
    assert float(dataset.PixelSpacing[0]) == pytest.approx(0.168)
    assert float(pydicom.dcmread(out_dir / "stage_2_train_images" / "aaaa-1.dcm").PixelSpacing[0]) == \
        pytest.approx(0.143)

    # Today's reader accepts the set, class file included, with the real boxes.
    records, skipped = read_labels(out_dir / "stage_2_train_labels.csv", out_dir / "stage_2_train_images",
                                   class_info_csv=out_dir / "stage_2_detailed_class_info.csv")
    assert len(skipped) == 0 and [record.target for record in records] == [0, 1, 0]
    np.testing.assert_allclose(records[1].boxes, [[264, 152, 477, 531], [562, 152, 818, 605]])


def test_a_smaller_set_is_a_subset_of_a_larger_one(tmp_path, tables):
    small, _, _ = _generate(tmp_path / "small", tables, limit=2)
    large, patients, _ = _generate(tmp_path / "large", tables)
    assert patients == 5
    for name in ("aaaa-1.dcm", "bbbb-2.dcm"):
        assert (small / "stage_2_train_images" / name).read_bytes() == \
            (large / "stage_2_train_images" / name).read_bytes()
    small_classes = pd.read_csv(small / "stage_2_detailed_class_info.csv")
    large_classes = pd.read_csv(large / "stage_2_detailed_class_info.csv")
    pd.testing.assert_frame_equal(small_classes, large_classes.iloc[: len(small_classes)])


def test_an_interrupted_set_is_completed_by_a_second_run(tmp_path, tables):
    out_dir, _, _ = _generate(tmp_path / "set", tables)
    folder = out_dir / "stage_2_train_images"
    whole = {path.name: path.read_bytes() for path in folder.iterdir()}
    # What a kill leaves: some images not written yet, a temporary cut short, no CSVs.
    (folder / "cccc-3.dcm").unlink()
    (folder / "eeee-5.dcm").unlink()
    (folder / "eeee-5.tmp.dcm").write_bytes(b"cut short")
    (out_dir / "stage_2_train_labels.csv").unlink()
    (out_dir / "stage_2_detailed_class_info.csv").unlink()

    _, patients, written = _generate(out_dir, tables)
    assert (patients, written) == (5, 2)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == whole
    assert (out_dir / "stage_2_train_labels.csv").read_text() == LABELS


def test_a_set_begun_with_another_seed_is_refused(tmp_path, tables):
    out_dir, _, _ = _generate(tmp_path / "set", tables, limit=1)
    with pytest.raises(SyntheticDataError, match=f"holds a set made with .*seed.*{SETTINGS_FILE}.*same settings"):
        _generate(out_dir, tables, limit=2, seed=1)
    assert sorted(path.name for path in (out_dir / "stage_2_train_images").iterdir()) == ["aaaa-1.dcm"]


def test_a_patient_without_a_header_row_is_named(tmp_path, tables):
    labels, headers = tables
    labels.write_text(LABELS + "gggg-7,,,,,0\n")
    with pytest.raises(SyntheticDataError, match="no header row for 1 patient.*gggg-7"):
        _generate(tmp_path / "set", tables)


def test_a_positive_row_without_numbers_names_its_line(tmp_path, tables):
    labels, _ = tables
    labels.write_text(LABELS.replace("323.0,577.0", "323.0,"))
    with pytest.raises(SyntheticDataError, match=r"stage_2_train_labels.csv:6: a Target 1 row needs numbers"):
        _generate(tmp_path / "set", tables)


def test_the_command_writes_the_set_and_refuses_the_size_options(tmp_path, tables):
    labels, headers = tables
    command = [sys.executable, "-m", "retinanet", "synth", "--out", str(tmp_path / "set"), "--from-labels",
               str(labels), "--headers", str(headers), "--limit", "2", "--no-progress"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "Wrote 2 of 2 patients' images" in completed.stdout
    refused = subprocess.run(command + ["--size", "256"], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "--size cannot go with --from-labels" in refused.stderr


def _real_tables() -> Path | None:
    """The directory of the real RSNA tables: $RSNA_LABELS_DIR, or shared/data/rsna beside a parent."""
    if os.environ.get("RSNA_LABELS_DIR"):
        return Path(os.environ["RSNA_LABELS_DIR"])
    for parent in REPOSITORY_ROOT.parents:
        if (parent / "shared" / "data" / "rsna").is_dir():
            return parent / "shared" / "data" / "rsna"
    return None


REAL = _real_tables()


@pytest.mark.skipif(REAL is None, reason="the real RSNA tables are not here (set RSNA_LABELS_DIR to the directory "
                                         "holding kaggle_stage_2_train_labels.csv.zip and the DICOM header table)")
def test_the_real_label_file_first_twenty_patients(tmp_path):
    import zipfile

    labels = REAL / "kaggle_stage_2_train_labels.csv.zip"
    out_dir, patients, written = generate_from_real_labels(
        tmp_path / "set", labels_csv=labels, headers_csv=REAL / "kaggle_stage_2_train_images_dicom_headers.csv.gz",
        limit=20, progress=False)
    assert patients == written == 20
    real_lines = zipfile.ZipFile(labels).read("stage_2_train_labels.csv").decode().splitlines(True)
    written_lines = (out_dir / "stage_2_train_labels.csv").read_text().splitlines(True)
    assert written_lines == real_lines[: len(written_lines)]
    assert real_lines[len(written_lines)].split(",")[0] not in {line.split(",")[0] for line in written_lines}
    records, _ = read_labels(out_dir / "stage_2_train_labels.csv", out_dir / "stage_2_train_images",
                             class_info_csv=out_dir / "stage_2_detailed_class_info.csv")
    assert len(records) == 20 and any(record.target for record in records)
