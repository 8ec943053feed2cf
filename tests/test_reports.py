"""`retinanet infer --dicom-sr`: the DICOM Structured Reports and secondary captures of
`retinanet.serve.reports`, read back by pydicom and highdicom and checked by dciodvfy."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from helpers import REPOSITORY_ROOT, run_file, unavailable
from pydicom.data import get_testdata_file

from retinanet.data.submission import read_submission
from retinanet.serve.reports import (Algorithm, ReportError, box_polyline, polyline_box, read_report, save_dataset,
                                     standard_age, structured_report)

RG1 = get_testdata_file("RG1_UNCR.dcm")
ALGORITHM = Algorithm(("demo-1",), ("demo-1/best.weights.h5",), "ab" * 32, 0.35, "0.1.0")
# What dciodvfy may say of these files: warnings about the films' own values, copied as they are.
TOLERATED_WARNINGS = (
    r"Value dubious for this VR .* Retired Person Name form",  # one-component names: RSNA's ids, RG1's "ward"
    r"Missing attribute or value that would be needed to build DICOMDIR - Study ID",  # the films' empty Study ID
    # A secondary capture's Laterality: absent is an error to dciodvfy, empty this warning; a chest has none.
    r"is only permitted to be empty when actually unknown.*attribute <Laterality>",
)


def header(path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_a_box_is_a_closed_rectangle_and_back():
    points = box_polyline([10.5, 20.0, 30.25, 40.0])
    assert points.tolist() == [[10.5, 20.0], [30.25, 20.0], [30.25, 40.0], [10.5, 40.0], [10.5, 20.0]]
    assert polyline_box(points, "here").tolist() == [10.5, 20.0, 30.25, 40.0]
    with pytest.raises(ReportError, match="here: a region that is not a closed rectangle"):
        polyline_box(points[:4], "here")
    with pytest.raises(ReportError, match="here: a region that is not an axis-aligned rectangle"):
        polyline_box([[0, 0], [5, 1], [5, 5], [0, 5], [0, 0]], "here")


@pytest.mark.parametrize(("age", "expected"), [("51", "051Y"), ("5", "005Y"), ("051Y", "051Y"), ("003M", "003M"),
                                               ("", ""), ("fifty", None), ("1234", None)])
def test_patient_age_in_dicom_form(age, expected):
    assert standard_age(age) == expected


def test_a_film_without_boxes_gets_a_report_that_says_so(tmp_path):
    source = header(RG1)
    save_dataset(tmp_path / "report.dcm", structured_report(source, np.zeros((0, 4)), [], 0.125, ALGORITHM, "RG1"))
    contents = read_report(pydicom.dcmread(tmp_path / "report.dcm"), "report")
    assert contents.boxes.shape == (0, 4) and contents.scores.shape == (0,)
    assert (contents.pneumonia_present, contents.image_probability) == (False, 0.125)
    assert contents.source_sop_instance_uid == source.SOPInstanceUID
    assert contents.algorithm_parameters == ["run: demo-1", "weights: demo-1/best.weights.h5",
                                             f"model fingerprint: sha256 {'ab' * 32}", "score threshold: 0.35"]


def test_a_report_has_the_same_uids_for_the_same_film_and_algorithm():
    source = header(RG1)
    first, again = (structured_report(source, [[1, 2, 3, 4]], [0.5], None, ALGORITHM, "RG1") for _ in range(2))
    other = structured_report(source, [[1, 2, 3, 4]], [0.5], None, replace(ALGORITHM, threshold=0.5), "RG1")
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID and first.StudyInstanceUID == source.StudyInstanceUID


def test_a_film_without_uids_and_a_file_that_is_no_report_are_errors():
    source = header(RG1)
    del source.StudyInstanceUID
    with pytest.raises(ReportError, match="film.dcm: cannot report on this film: no StudyInstanceUID"):
        structured_report(source, [], [], None, ALGORITHM, "film.dcm")
    with pytest.raises(ReportError, match="RG1: not a pneumonia report"):
        read_report(header(RG1), "RG1")


# --- Directory inference with reports (conftest.py's directory_reports) -------------------------------------


@pytest.mark.slow
def test_every_report_reads_back_to_the_films_boxes_scores_and_probability(pacs_films, directory_reports):
    import highdicom

    journal, output = directory_reports["journal"], directory_reports["output"]
    submission = read_submission(output / "submission.csv")
    assert directory_reports["summary"]["num_reports"] == len(journal) == 5
    for patient, entry in journal.items():
        film = header(pacs_films / f"{patient}.dcm")
        report = pydicom.dcmread(output / "reports" / f"{patient}.sr.dcm")
        contents = read_report(report, patient)
        # Graphic Data is 32-bit (FL): the regions are the boxes rounded to float32, exactly.
        assert np.array_equal(contents.boxes, np.float32(entry["boxes"]).astype(np.float64)), patient
        assert contents.scores.tolist() == entry["scores"] and contents.image_probability == entry["image_probability"]
        assert contents.pneumonia_present and len(contents.scores) == 10
        # The submission's rounding: x, y, width and height to 1 decimal (x + width within 0.1), scores to 4.
        boxes, scores = submission[patient]
        assert np.abs(boxes - contents.boxes).max() <= 0.1 + 1e-3 and np.abs(scores - contents.scores).max() <= 5e-5
        assert contents.source_sop_instance_uid == film.SOPInstanceUID
        # Every region is on the film, and the evidence names its study, series and instance.
        regions = highdicom.sr.ComprehensiveSR.from_dataset(report).content.get_planar_roi_measurement_groups()
        sources = {group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for group in regions}
        assert sources == {film.SOPInstanceUID}
        (evidence,) = report.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == film.StudyInstanceUID
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == film.SeriesInstanceUID
        assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
            film.SOPInstanceUID
        for keyword in ("PatientName", "PatientID", "PatientSex", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
                        "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
            assert report.get(keyword) == film.get(keyword), (patient, keyword)
        assert report.SeriesInstanceUID != film.SeriesInstanceUID and report.Modality == "SR"
        assert "model fingerprint: sha256 " + directory_reports["header"]["model"] in contents.algorithm_parameters
        assert {"run: run", "weights: run/best.weights.h5", "score threshold: 0.0"} <= set(
            contents.algorithm_parameters)


@pytest.mark.slow
def test_the_rsna_films_bare_ages_are_written_as_years(pacs_films, directory_reports):
    for path in sorted(pacs_films.glob("*.dcm")):
        age = header(path).get("PatientAge")
        report = header(directory_reports["output"] / "reports" / f"{path.stem}.sr.dcm")
        assert report.get("PatientAge") == (None if age is None else f"{int(age):03d}Y" if age.isdigit() else age)


@pytest.mark.slow
def test_the_secondary_capture_is_the_film_with_the_boxes_burned_in(pacs_films, directory_reports):
    from retinanet.data.dicom import read_image
    from retinanet.visualize import PREDICTION_COLOR

    entry = directory_reports["journal"]["RG1_UNCR"]
    capture = pydicom.dcmread(directory_reports["output"] / "reports" / "RG1_UNCR.sc.dcm")
    film = read_image(pacs_films / "RG1_UNCR.dcm")
    assert capture.pixel_array.shape == (*film.shape, 3) and capture.BurnedInAnnotation == "YES"
    assert capture.StudyInstanceUID == header(RG1).StudyInstanceUID
    x1, y1, x2, y2 = (int(round(value)) for value in entry["boxes"][-1])  # the least confident: drawn last, on top
    assert tuple(capture.pixel_array[min(y2, film.shape[0] - 1), (x1 + x2) // 2]) == PREDICTION_COLOR
    far = np.ones(film.shape, bool)  # away from every box, its line and its score's label
    for box in np.round(entry["boxes"]).astype(int):
        far[max(0, box[1] - 80):box[3] + 80, max(0, box[0] - 80):box[2] + 80] = False
    assert np.array_equal(capture.pixel_array[far][:, 0], film[far])  # elsewhere the film as read, untouched


def dciodvfy_problems(path) -> list[str]:
    """dciodvfy's errors and warnings on `path` but the tolerated ones."""
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = [line for line in (completed.stdout + completed.stderr).splitlines()
             if line.startswith(("Error", "Warning"))]
    return [line for line in lines if not any(re.search(pattern, line) for pattern in TOLERATED_WARNINGS)]


@pytest.mark.slow
def test_dciodvfy_finds_no_error_in_the_reports_and_captures(directory_reports, tmp_path):
    if shutil.which("dciodvfy") is None:
        unavailable("dciodvfy is not installed (Debian: apt-get install dicom3tools)")
    save_dataset(tmp_path / "empty.sr.dcm", structured_report(header(RG1), [], [], None, ALGORITHM, "RG1"))
    files = [*sorted((directory_reports["output"] / "reports").iterdir()), tmp_path / "empty.sr.dcm"]
    assert len(files) == 11
    assert {str(path): dciodvfy_problems(path) for path in files} == {str(path): [] for path in files}


@pytest.mark.slow
def test_a_single_film_gets_its_report_and_a_png_is_a_clean_error(tiny_run, pacs_films, directory_reports, png_image,
                                                                 tmp_path, script, clean_error):
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", pacs_films / "RG1_UNCR.dcm", "--output",
                       tmp_path, "--threshold", "0", "--dicom-sr")
    assert completed.returncode == 0, completed.stderr
    assert f"wrote {tmp_path / 'reports' / 'RG1_UNCR.sr.dcm'}" in completed.stdout
    contents = read_report(pydicom.dcmread(tmp_path / "reports" / "RG1_UNCR.sr.dcm"), "single")
    expected = read_report(pydicom.dcmread(directory_reports["output"] / "reports" / "RG1_UNCR.sr.dcm"), "directory")
    assert np.array_equal(contents.boxes, expected.boxes) and np.array_equal(contents.scores, expected.scores)
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", png_image, "--output", tmp_path,
                       "--dicom-sr")
    clean_error(completed, f"--dicom-sr: {png_image} is not a DICOM film")


@pytest.mark.slow
def test_the_drawing_tool_draws_a_reports_regions_over_its_film(pacs_films, directory_reports, tmp_path, clean_error):
    import cv2

    report = directory_reports["output"] / "reports" / "RG1_UNCR.sr.dcm"
    completed = run_file(REPOSITORY_ROOT / "tools" / "draw_report.py", "--report", report, "--film",
                         pacs_films / "RG1_UNCR.dcm", "--output", tmp_path / "rg1.png", "--width", "512")
    assert completed.returncode == 0, completed.stderr
    assert cv2.imread(str(tmp_path / "rg1.png")).shape[1] == 512
    other = sorted(pacs_films.glob("*.dcm"))[0]
    clean_error(run_file(REPOSITORY_ROOT / "tools" / "draw_report.py", "--report", report, "--film", other,
                         "--output", tmp_path / "other.png"), f"{report} reports on the film", f"not on {other}")
