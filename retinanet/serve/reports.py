"""The DICOM results of `retinanet infer`: a Structured Report per film, and optionally a secondary
capture with the boxes burned in for viewers without SR support (both written by highdicom).

The report is a Comprehensive SR following TID 1500 (Measurement Report), readable by OHIF, 3D
Slicer and other viewers and by highdicom (`read_report`):

- one planar region (TID 1410) per box above the score threshold: the rectangle as a closed
  POLYLINE of five points in the source film's pixels (DICOM's convention, which is the boxes':
  (0, 0) is the top left corner of the top left pixel), coded as the finding Pneumonia (SNOMED CT
  233604007) in the lung, with its score as "Certainty of Finding" (DCM 111012, no units, 0 to 1);
- one film-level group (TID 1501) referencing the film: the image head's probability, when the
  model has the head, as the same measurement, and "Pneumonia: Present" or "Absent" (absent when
  no box reaches the threshold: the report of a film without a box says so);
- the device observer and, in every group and measurement, the algorithm (`Algorithm`): name,
  version, the runs and weights files, the fingerprint of the weights and inference config, and
  the threshold.

Patient and study modules are copied from the film (a Patient's Age of bare digits, as the RSNA
films have it, written as years: `51` -> `051Y`), which the report references as its evidence
and in every region. The report's UIDs are derived from the film's SOP Instance UID and the
algorithm (fingerprint and threshold): the same weights and threshold always give the same UIDs,
so that storing a report again after an interruption replaces it rather than adding a copy.
Coordinates are stored as DICOM's 32-bit floats (Graphic Data is FL); scores and probabilities
exactly (Floating Point Value, FD).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from retinanet.data.dicom import ignoring_warnings, read_source_header
from retinanet.errors import UserError
from retinanet.runtime.safe_writes import make_directory, replace_atomically
from retinanet.serve.journal import model_fingerprint

ALGORITHM_NAME = "rsna-retinanet"
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
CHEST_RADIOGRAPH = Code("399208008", "SCT", "Plain X-ray of chest")
CERTAINTY = codes.DCM.CertaintyOfFinding
REPORT_SERIES_NUMBER, CAPTURE_SERIES_NUMBER = 9901, 9902
REPORT_SERIES = "pneumonia boxes (rsna-retinanet)"
CAPTURE_SERIES = "pneumonia boxes burned in (rsna-retinanet)"
FILM_GROUP = "film"
REPORTS = "reports"  # the folder of the reports beside `infer`'s other outputs
# The namespace of the reports' name-based UIDs (`derived_uid`): a random UUID, fixed once.
UID_NAMESPACE = uuid.UUID("109f7d29-b58f-4aea-8531-71f8027423f1")
# highdicom warns about the source's person names (e.g. RSNA's one-component names): they are
# copied as the film holds them, so the warning is about the film, not the report.
_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


class ReportError(UserError, ValueError):
    """A film from which no report can be made, or a file that is not one of these reports."""


@dataclass(frozen=True)
class Algorithm:
    """Who made the findings: the runs and weights, the fingerprint of the weights and the
    inference config (`retinanet.serve.journal.model_fingerprint`), and the score threshold."""

    runs: tuple[str, ...]  # run directory names
    weights: tuple[str, ...]  # "<run>/<weights file>"
    fingerprint: str
    threshold: float
    version: str

    @property
    def key(self) -> str:
        """What a report depends on besides the film: reports of equal keys are the same."""
        return f"{self.fingerprint}:{self.threshold!r}"

    def parameters(self) -> list[str]:
        return [*(f"run: {run}" for run in self.runs), *(f"weights: {weights}" for weights in self.weights),
                f"model fingerprint: sha256 {self.fingerprint}", f"score threshold: {self.threshold!r}"]

    def identification(self) -> highdicom.sr.AlgorithmIdentification:
        return highdicom.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=self.version,
                                                    parameters=self.parameters())


def package_version() -> str:
    try:
        return version("rsna-retinanet")
    except PackageNotFoundError:  # run from a clone that was not installed
        return "unknown"


def algorithm_of(sources, fingerprint: str, threshold: float) -> Algorithm:
    """The `Algorithm` of a Detector's `ModelSource`s (names only: a report leaves the machine)."""
    return Algorithm(tuple(Path(source.run_dir).name for source in sources),
                     tuple(f"{Path(source.run_dir).name}/{Path(source.weights).name}" for source in sources),
                     fingerprint, float(threshold), package_version())


def report_algorithm(detector) -> Algorithm:
    """The `Algorithm` of a `retinanet.serve.inference.Detector`: its runs, weights and threshold."""
    return algorithm_of(detector.sources, model_fingerprint(detector.config, detector.models), detector.threshold)


def derived_uid(*parts) -> str:
    """A UID that is a function of `parts`: the 2.25 form of their name-based (SHA-1) UUID."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '|'.join(map(str, parts))).int}"


def box_polyline(box) -> np.ndarray:
    """`x1, y1, x2, y2` -> the closed rectangle [5, 2] of (column, row) points, clockwise on screen."""
    x1, y1, x2, y2 = (float(value) for value in box)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])


def polyline_box(points: np.ndarray, where: str) -> np.ndarray:
    """A closed axis-aligned rectangle [5, 2] -> `x1, y1, x2, y2`; ReportError naming `where` otherwise."""
    points = np.asarray(points, np.float64)
    if points.shape != (5, 2) or not np.array_equal(points[0], points[4]):
        raise ReportError(f"{where}: a region that is not a closed rectangle of 5 points: {points.tolist()}")
    (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
    if {tuple(point) for point in points[:4]} != {(x, y) for x in (x1, x2) for y in (y1, y2)}:
        raise ReportError(f"{where}: a region that is not an axis-aligned rectangle: {points.tolist()}")
    return np.array([x1, y1, x2, y2])


def standard_age(age: str) -> str | None:
    """A Patient's Age in DICOM's form (`051Y`): bare digits, as the RSNA films hold them, are years;
    None for any other value that is not DICOM's form (the report leaves it out)."""
    age = str(age).strip()
    if re.fullmatch(r"\d{3}[DWMY]", age) or age == "":
        return age
    return f"{int(age):03d}Y" if re.fullmatch(r"\d{1,3}", age) else None


def _copyable(source: pydicom.Dataset, where: str) -> pydicom.Dataset:
    """The film's header as the report copies it: checked, with its Patient's Age in DICOM's form."""
    missing = [keyword for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not source.get(keyword)]
    if missing:
        raise ReportError(f"{where}: cannot report on this film: no {', '.join(missing)} in its header")
    if "PatientAge" not in source:
        return source
    copy = pydicom.Dataset(source)
    age = standard_age(source.PatientAge)
    if age is None:
        del copy.PatientAge
    else:
        copy.PatientAge = age
    return copy


def _instance_number(source: pydicom.Dataset) -> int:
    try:
        return max(1, int(source.get("InstanceNumber") or 1))
    except (TypeError, ValueError):
        return 1


def _region_group(source, index: int, box, score: float, algorithm: Algorithm):
    region = highdicom.sr.ImageRegion(
        graphic_type=highdicom.sr.GraphicTypeValues.POLYLINE, graphic_data=box_polyline(box),
        source_image=highdicom.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID))
    certainty = highdicom.sr.Measurement(name=CERTAINTY, value=float(score), unit=codes.UCUM.NoUnits,
                                         algorithm_id=algorithm.identification())
    tracking = highdicom.sr.TrackingIdentifier(
        uid=derived_uid("region", source.SOPInstanceUID, algorithm.key, index), identifier=f"box {index + 1}")
    return highdicom.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, finding_type=PNEUMONIA,
        finding_category=codes.SCT.ClinicalFinding, finding_sites=[highdicom.sr.FindingSite(codes.SCT.Lung)],
        algorithm_id=algorithm.identification(), measurements=[certainty])


def _film_group(source, num_boxes: int, image_probability: float | None, algorithm: Algorithm):
    measurements = [] if image_probability is None or not np.isfinite(image_probability) else [
        highdicom.sr.Measurement(name=CERTAINTY, value=float(image_probability), unit=codes.UCUM.NoUnits,
                                 algorithm_id=algorithm.identification())]
    finding = highdicom.sr.QualitativeEvaluation(PNEUMONIA, codes.SCT.Present if num_boxes else codes.SCT.Absent)
    tracking = highdicom.sr.TrackingIdentifier(uid=derived_uid("film", source.SOPInstanceUID, algorithm.key),
                                               identifier=FILM_GROUP)
    return highdicom.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=PNEUMONIA, finding_category=codes.SCT.ClinicalFinding,
        algorithm_id=algorithm.identification(), measurements=measurements or None, qualitative_evaluations=[finding],
        source_images=[highdicom.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)])


def structured_report(source: pydicom.Dataset, boxes, scores, image_probability: float | None,
                      algorithm: Algorithm, where: str) -> highdicom.sr.ComprehensiveSR:
    """The report on the film whose header is `source` (see the module docstring); `boxes` [N, 4]
    `x1, y1, x2, y2` in its pixels with their `scores` [N], those above the threshold. `where`
    (the file or URL) names the film in errors."""
    source = _copyable(source, where)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    groups = [_region_group(source, index, box, score, algorithm)
              for index, (box, score) in enumerate(zip(boxes, np.asarray(scores, np.float64).reshape(-1)))]
    groups.append(_film_group(source, len(boxes), image_probability, algorithm))
    device = highdicom.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=highdicom.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", algorithm.fingerprint), name=ALGORITHM_NAME,
            model_name="RetinaNet ResNet50-FPN", manufacturer_name=ALGORITHM_NAME))
    try:
        with ignoring_warnings(_PERSON_NAME_WARNING):
            content = highdicom.sr.MeasurementReport(
                observation_context=highdicom.sr.ObservationContext(observer_device_context=device),
                procedure_reported=CHEST_RADIOGRAPH, imaging_measurements=groups)
            return highdicom.sr.ComprehensiveSR(
                evidence=[source], content=content,
                series_instance_uid=derived_uid("report series", source.StudyInstanceUID, algorithm.key),
                series_number=REPORT_SERIES_NUMBER,
                sop_instance_uid=derived_uid("report", source.SOPInstanceUID, algorithm.key),
                instance_number=_instance_number(source), manufacturer=ALGORITHM_NAME, is_complete=True,
                series_description=REPORT_SERIES)
    except (AttributeError, TypeError, ValueError) as error:  # highdicom's checks of the film's header
        raise ReportError(f"{where}: cannot make a report on this film: {error}") from None


def burned_in_capture(source: pydicom.Dataset, picture: np.ndarray, boxes, scores, algorithm: Algorithm,
                      where: str) -> highdicom.sc.SCImage:
    """A secondary capture of the film as `read_image` shows it (`picture`, grey uint8 [H, W]) with
    the boxes and scores drawn in red, in a series of its own beside the film."""
    from retinanet.visualize import draw_boxes

    source = _copyable(source, where)
    drawn = draw_boxes(picture, None, np.asarray(boxes).reshape(-1, 4), np.asarray(scores).reshape(-1),
                       legend=False)
    orientation = source.get("PatientOrientation")
    has_orientation = orientation is not None and len(orientation) == 2
    try:
        with ignoring_warnings(_PERSON_NAME_WARNING):
            capture = highdicom.sc.SCImage.from_ref_dataset(
                ref_dataset=source, pixel_array=drawn, photometric_interpretation="RGB", bits_allocated=8,
                coordinate_system="PATIENT",
                series_instance_uid=derived_uid("capture series", source.StudyInstanceUID, algorithm.key),
                series_number=CAPTURE_SERIES_NUMBER,
                sop_instance_uid=derived_uid("capture", source.SOPInstanceUID, algorithm.key),
                instance_number=_instance_number(source), manufacturer=ALGORITHM_NAME,
                # highdicom asks for an orientation; a film without one keeps it empty (below).
                patient_orientation=tuple(orientation) if has_orientation else ("L", "F"),
                series_description=CAPTURE_SERIES)
    except (AttributeError, TypeError, ValueError) as error:
        raise ReportError(f"{where}: cannot make a secondary capture of this film: {error}") from None
    if not has_orientation:
        capture.PatientOrientation = ""  # type 2: known to be unknown
    capture.Laterality = source.get("Laterality", "")  # type 2C; a chest film has none
    capture.BurnedInAnnotation = "YES"
    return capture


@dataclass(frozen=True)
class ReportContents:
    """What `read_report` finds in one of these reports."""

    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 in the film's pixels
    scores: np.ndarray  # [N]
    image_probability: float | None
    pneumonia_present: bool
    source_sop_instance_uid: str
    algorithm_parameters: list[str]


def read_report(dataset: pydicom.Dataset, where: str) -> ReportContents:
    """A report written by `structured_report`, read back with highdicom; ReportError naming `where`
    when it is not one."""
    try:
        report = highdicom.sr.ComprehensiveSR.from_dataset(dataset, copy=False)
        regions = report.content.get_planar_roi_measurement_groups()
        (film,) = [group for group in report.content.get_image_measurement_groups()
                   if group.tracking_identifier == FILM_GROUP]
    except (AttributeError, TypeError, ValueError) as error:
        raise ReportError(f"{where}: not a pneumonia report of {ALGORITHM_NAME}: {error}") from None
    boxes = np.array([polyline_box(group.roi.value, where) for group in regions]).reshape(-1, 4)
    scores = np.array([group.get_measurements(name=CERTAINTY)[0].value for group in regions], np.float64)
    probability = film.get_measurements(name=CERTAINTY)
    (finding,) = film.get_qualitative_evaluations(name=PNEUMONIA)
    (source,) = film.source_images
    return ReportContents(boxes, scores, probability[0].value if probability else None,
                          finding.value == codes.SCT.Present, str(source.referenced_sop_instance_uid),
                          [str(item.TextValue) for item in film[0].ContentSequence
                           if item.name == codes.DCM.AlgorithmParameters])


def save_dataset(path: Path, dataset: pydicom.Dataset) -> None:
    """`dataset` as a DICOM file at `path`, whole or not at all."""
    replace_atomically(path, lambda temporary: dataset.save_as(temporary, enforce_file_format=True))


def write_film_reports(path: Path, reports_dir: Path, boxes, scores, image_probability: float | None,
                       algorithm: Algorithm, picture: np.ndarray | None = None) -> list[Path]:
    """The report on the DICOM film at `path` as `<reports_dir>/<stem>.sr.dcm` and, given its
    `picture` (grey uint8, as read), the secondary capture `<stem>.sc.dcm`; returns the files written."""
    source = read_source_header(path)
    written = [reports_dir / f"{path.stem}.sr.dcm"]
    datasets = [structured_report(source, boxes, scores, image_probability, algorithm, str(path))]
    if picture is not None:
        written.append(reports_dir / f"{path.stem}.sc.dcm")
        datasets.append(burned_in_capture(source, picture, boxes, scores, algorithm, str(path)))
    make_directory(reports_dir)
    for file, dataset in zip(written, datasets):
        save_dataset(file, dataset)
    return written
