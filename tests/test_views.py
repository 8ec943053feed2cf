"""View positions for the split: from a headers table or from the DICOMs; the split stratified by them."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinanet.data.rsna import LabelError, Record
from retinanet.data.views import UNKNOWN_VIEW, read_view_positions, view_positions_from_images


def _write_dicom(path: Path, view_position: str | None) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    dataset.Modality = "CR"
    dataset.PatientID = path.stem
    if view_position is not None:
        dataset.ViewPosition = view_position
    dataset.set_pixel_data(np.zeros((8, 8), np.uint8), "MONOCHROME2", 8)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_headers_table_gives_the_labelled_patients_views(tmp_path):
    headers = tmp_path / "headers.csv.gz"
    pd.DataFrame({"Unnamed: 0": [0, 1, 2, 3], "PatientID": ["a", "b", "c", "other"],
                  "ViewPosition": ["AP", "PA", " AP ", "PA"]}).to_csv(headers, index=False)
    assert read_view_positions(headers, ["a", "b", "c"]) == {"a": "AP", "b": "PA", "c": "AP"}
    plain = tmp_path / "headers.csv"
    plain.write_text("patientId,ViewPosition\na,PA\n")  # the labels' spelling of the column works too
    assert read_view_positions(plain, ["a"]) == {"a": "PA"}


@pytest.mark.parametrize("content, message", [
    ("PatientID,ViewPosition\na,AP\n", r"no ViewPosition for 1 labelled patient\(s\), e\.g\. b"),
    ("PatientID,ViewPosition\na,AP\nb,\n", r":3: empty ViewPosition of patient b"),
    ("PatientID,ViewPosition\na,AP\nb,PA\na,PA\n", r":4: patient a has view positions 'AP' and 'PA'"),
    ("PatientID,Position\na,AP\nb,PA\n", r"missing column\(s\) ViewPosition"),
    ("Patient,ViewPosition\na,AP\nb,PA\n", r"missing column patientId or PatientID"),
])
def test_headers_table_problems_name_the_file_and_line(tmp_path, content, message):
    headers = tmp_path / "headers.csv"
    headers.write_text(content)
    with pytest.raises(LabelError, match=rf"{headers}{message}" if message.startswith(":") else message):
        read_view_positions(headers, ["a", "b"])


def test_views_from_the_dicom_headers_and_an_unknown_stratum(tmp_path):
    records = [Record(name, str(_write_dicom(tmp_path / f"{name}.dcm", view)), np.zeros((0, 4), np.float32), 0)
               for name, view in (("a", "AP"), ("b", "PA"), ("c", None))]
    (tmp_path / "d.dcm").write_bytes(b"not a DICOM file")
    records.append(Record("d", str(tmp_path / "d.dcm"), np.zeros((0, 4), np.float32), 0))
    views, unknown = view_positions_from_images(records)
    assert views == {"a": "AP", "b": "PA", "c": UNKNOWN_VIEW, "d": UNKNOWN_VIEW}
    assert unknown.skipped[0] == (str(tmp_path / "c.dcm"), "no ViewPosition in the header")
    assert unknown.skipped[1][0] == str(tmp_path / "d.dcm") and len(unknown) == 2


# --- prepare_split: the class CSV optional, the split stratified by view -------------------------


def _data_set(root: Path, images: bool) -> list[str]:
    """20 negatives and 10 positives (labels only, no class CSV); 5 AP negatives and 5 AP positives."""
    rows, patients = [], [f"n{i:02d}" for i in range(20)] + [f"p{i:02d}" for i in range(10)]
    for patient in patients:
        rows.append(f"{patient},10,20,30,40,1" if patient.startswith("p") else f"{patient},,,,,0")
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text("patientId,x,y,width,height,Target\n" + "\n".join(rows) + "\n")
    views = ["AP" if int(patient[1:]) % (4 if patient.startswith("n") else 2) == 0 else "PA" for patient in patients]
    if images:
        for patient, view in zip(patients, views):
            _write_dicom(root / "images" / f"{patient}.dcm", view)
    pd.DataFrame({"PatientID": patients, "ViewPosition": views}).to_csv(root / "headers.csv", index=False)
    return views


def _config(root: Path, **data):
    from retinanet.config import config_from_dict

    return config_from_dict({"data": {"root": str(root), "labels_csv": "labels.csv", "train_images": "images",
                                      "class_info_csv": "", "original_size": 128, "num_folds": 5,
                                      "split_file": str(root / "split.csv"), "cache_dir": str(root / "cache"),
                                      **data}})


def _per_fold(root: Path) -> dict:
    folds = pd.read_csv(root / "split.csv")
    return {fold: sorted(zip(group["Target"], group["ViewPosition"])) for fold, group in folds.groupby("fold")}


@pytest.mark.parametrize("source", ["headers_csv", "dicom_headers"])
def test_prepare_split_stratifies_by_view_without_the_class_csv(tmp_path, source):
    from retinanet.data.split import prepare_split

    _data_set(tmp_path, images=source == "dicom_headers")
    config = _config(tmp_path, headers_csv="headers.csv" if source == "headers_csv" else "")
    prepared = prepare_split(config, progress=False, require_images=source == "dicom_headers")
    assert prepared.by_view_position
    # Every fold: 4 negatives (1 AP) and 2 positives (1 AP).
    assert all(members == [(0, "AP"), (0, "PA"), (0, "PA"), (0, "PA"), (1, "AP"), (1, "PA")]
               for members in _per_fold(tmp_path).values())
    classes = {record.patient_id[0]: record.class_name for record in prepared.train + prepared.validation}
    assert classes == {"n": "", "p": "Lung Opacity"}


def test_prepare_split_without_views_or_images_is_stratified_by_target_only(tmp_path):
    from retinanet.data.split import prepare_split

    _data_set(tmp_path, images=False)
    prepared = prepare_split(_config(tmp_path), progress=False, require_images=False)
    assert not prepared.by_view_position
    assert pd.read_csv(tmp_path / "split.csv").columns.tolist() == ["patientId", "Target", "fold"]
    with pytest.raises(LabelError, match=r"n00\.dcm"):  # training still needs every image
        prepare_split(_config(tmp_path), progress=False)
    missing = _config(tmp_path, headers_csv="missing.csv.gz", split_file=str(tmp_path / "other.csv"))
    with pytest.raises(LabelError, match=rf"{tmp_path / 'missing.csv.gz'}: file not found"):
        prepare_split(missing, progress=False, require_images=False)


def test_prepare_split_puts_an_unreadable_header_in_a_stratum_of_its_own(tmp_path, capsys):
    from retinanet.data.split import prepare_split

    _data_set(tmp_path, images=True)
    (tmp_path / "images" / "n03.dcm").write_bytes(b"not a DICOM file")  # the image reader decides about it later
    prepared = prepare_split(_config(tmp_path), progress=False)
    assert prepared.by_view_position and len(prepared.train) + len(prepared.validation) == 30
    folds = pd.read_csv(tmp_path / "split.csv", keep_default_na=False)
    assert folds.loc[folds["patientId"] == "n03", "ViewPosition"].item() == ""
    listing = tmp_path / "cache" / "unknown_views.csv"
    assert "n03.dcm" in listing.read_text() and str(listing) in capsys.readouterr().out
