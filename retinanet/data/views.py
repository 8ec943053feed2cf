"""View positions (AP, PA) of the patients, which the fold split stratifies by beside Target.

From a table of DICOM headers (`data.headers_csv`, e.g. the Kaggle
`stage_2_train_images_dicom_headers.csv.gz`: a patientId or PatientID column and ViewPosition)
or, without one, from the headers of the DICOMs themselves. AP films (bedside, sicker patients)
are positive four times as often as PA films on RSNA: folds that differ in their AP share differ
in difficulty.
"""

from __future__ import annotations

from pathlib import Path

from retinanet.data.dicom import DicomReadError, read_header
from retinanet.data.patient_ids import check_patient_id
from retinanet.data.rsna import LabelError, Record, SkipReport, read_table

PATIENT_COLUMNS = ("patientId", "PatientID")  # the labels' spelling, the DICOM keyword's
VIEW_COLUMN = "ViewPosition"
UNKNOWN_VIEW = ""  # the stratum of the patients whose DICOM header gives no view position


def read_view_positions(headers_csv: str | Path, patient_ids) -> dict[str, str]:
    """{patientId: view position} of `patient_ids` from a headers table; every one of them must be in it.

    Rows of other patients are ignored (the table may cover more images than the labels), but for
    their ids, which must be valid file names too. An empty view or a patient given two views is a
    LabelError naming the file and line.
    """
    headers_csv = Path(headers_csv)
    frame = read_table(headers_csv, (VIEW_COLUMN,))
    patient_column = next((column for column in PATIENT_COLUMNS if column in frame.columns), None)
    if patient_column is None:
        raise LabelError(f"{headers_csv}: missing column {' or '.join(PATIENT_COLUMNS)} "
                         f"(found: {', '.join(frame.columns)})")
    wanted = set(patient_ids)
    views: dict[str, str] = {}
    for index, (patient_id, view) in enumerate(zip(frame[patient_column].str.strip(), frame[VIEW_COLUMN].str.strip())):
        where = f"{headers_csv}:{index + 2}"
        check_patient_id(patient_id, where, LabelError)  # other patients' too: a table naming paths is broken
        if patient_id not in wanted:
            continue
        if not view:
            raise LabelError(f"{where}: empty {VIEW_COLUMN} of patient {patient_id}")
        if views.setdefault(patient_id, view) != view:
            raise LabelError(f"{where}: patient {patient_id} has view positions {views[patient_id]!r} and {view!r}")
    missing = sorted(wanted - set(views))
    if missing:
        raise LabelError(f"{headers_csv}: no {VIEW_COLUMN} for {len(missing)} labelled patient(s), e.g. {missing[0]}")
    return views


def view_positions_from_images(records: list[Record]) -> tuple[dict[str, str], SkipReport]:
    """{patientId: view position} from each record's DICOM header (no pixels read).

    A file whose header cannot be read or has no ViewPosition puts its patient in the UNKNOWN_VIEW
    stratum, listed with the reason in the returned report: the patient stays in the split, and
    reading its image (under data.bad_file_policy) decides later whether it trains.
    """
    views, report = {}, SkipReport()
    for record in records:
        try:
            view = (read_header(record.image_path)[VIEW_COLUMN] or "").strip()
            if not view:
                raise DicomReadError(record.image_path, f"no {VIEW_COLUMN} in the header")
        except DicomReadError as error:
            report.add(record.image_path, str(error.reason or error))
            view = UNKNOWN_VIEW
        views[record.patient_id] = view
    return views, report
