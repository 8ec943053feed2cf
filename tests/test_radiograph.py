"""A real chest radiograph (pydicom-data's RG1: 1955 x 1841, MONOCHROME1, 15 bits stored) in four
encodings: uncompressed (RG1_UNCR), JPEG 2000 lossless (RG1_J2KR) and lossy (RG1_J2KI), and the
lossy picture stored uncompressed (RG1_UNCI). It is read and inferred as the RSNA files are."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from retinanet.data.dicom import read_image

ENCODINGS = ("RG1_UNCR", "RG1_UNCI", "RG1_J2KR", "RG1_J2KI")
# Measured: the lossy JPEG 2000 stored values differ from the lossless ones by at most 403 of
# the file's window width of 30000 (3.4 grey levels), by 0.43 grey levels on average.
LOSSY_MAX_DIFFERENCE = 3
LOSSY_MEAN_DIFFERENCE = 0.5


@pytest.fixture(scope="module")
def pictures() -> dict:
    return {name: read_image(get_testdata_file(f"{name}.dcm")) for name in ENCODINGS}


def region(picture: np.ndarray, top: float, bottom: float, left: float, right: float) -> float:
    """Mean grey of the region between fractions of the picture's height and width."""
    height, width = picture.shape
    return float(picture[int(top * height):int(bottom * height), int(left * width):int(right * width)].mean())


def test_the_four_encodings_read_as_one_picture(pictures):
    reference = pictures["RG1_UNCR"]
    assert reference.shape == (1955, 1841) and reference.dtype == np.uint8
    np.testing.assert_array_equal(pictures["RG1_J2KR"], reference)  # lossless
    np.testing.assert_array_equal(pictures["RG1_J2KI"], pictures["RG1_UNCI"])  # the lossy picture, decoded
    difference = np.abs(pictures["RG1_J2KI"].astype(int) - reference)
    assert difference.max() <= LOSSY_MAX_DIFFERENCE and difference.mean() <= LOSSY_MEAN_DIFFERENCE
    assert difference.max() > 0  # it is lossy: a reader ignoring the codestream would not get here


def test_monochrome1_is_shown_as_a_film_with_white_bones(pictures):
    picture = pictures["RG1_UNCR"]
    right_lung, left_lung = region(picture, 0.25, 0.45, 0.18, 0.35), region(picture, 0.25, 0.45, 0.62, 0.80)
    spine = region(picture, 0.25, 0.60, 0.46, 0.54)
    # Measured 145, 140 and 223: lungs (air) dark, the spine and mediastinum bright.
    assert max(right_lung, left_lung) < spine - 50
    # The collimator's shutters along the edges are white, the air above the shoulders black.
    collimated = [region(picture, 0, 0.015, 0.1, 0.9), region(picture, 0.985, 1, 0.1, 0.9),
                  region(picture, 0.3, 0.7, 0, 0.02), region(picture, 0.3, 0.7, 0.98, 1)]
    assert min(collimated) > max(right_lung, left_lung) + 50
    air = [region(picture, 0.02, 0.06, 0, 0.08), region(picture, 0.02, 0.06, 0.92, 1)]
    assert max(air) < min(right_lung, left_lung) - 50


def test_fifteen_bit_data_is_windowed_onto_the_eight_bit_range(pictures):
    picture = pictures["RG1_UNCR"]
    # The file's window (centre 15000, width 30000) maps its 874..26479 stored values onto
    # 30..248: nothing clipped to black or white, and most of the range in use.
    assert (picture == 0).mean() < 0.001 and (picture == 255).mean() < 0.001
    low, high = np.percentile(picture, [1, 99])
    assert high - low > 150
    assert len(np.unique(picture)) > 200


@pytest.mark.slow
def test_infer_on_every_encoding_gives_finite_boxes_and_an_overlay(tiny_run, evaluated_run, tmp_path, capsys):
    from retinanet.commands import infer
    from retinanet.commands.common import run_module
    from retinanet.data.submission import read_submission

    directory = tmp_path / "dicoms"
    directory.mkdir()
    for name in ENCODINGS:
        path = get_testdata_file(f"{name}.dcm")
        shutil.copyfile(path, directory / f"{name}.dcm")
        assert run_module(infer, ["--run-dir", str(tiny_run.run_dir), "--input", path, "--output",
                                  str(tmp_path / "out"), "--threshold", "0"]) == 0
        document = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert (document["image_height"], document["image_width"]) == (1955, 1841)
        boxes = np.array([[box[key] for key in ("x", "y", "width", "height", "score")] for box in document["boxes"]])
        assert len(boxes) == tiny_run.config.postprocessing.max_detections and np.isfinite(boxes).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 1841 + 1e-3).all()
        overlay = cv2.imread(str(tmp_path / "out" / f"{name}.png"))
        assert overlay.shape[0] > 1955 and overlay.shape[1:] == (1841, 3)
    capsys.readouterr()
    assert run_module(infer, ["--run-dir", str(tiny_run.run_dir), "--input", str(directory), "--output",
                              str(tmp_path / "submission"), "--threshold", "0", "--no-progress"]) == 0
    predictions = read_submission(tmp_path / "submission" / "submission.csv", expected_patient_ids=ENCODINGS)
    assert all(len(scores) == tiny_run.config.postprocessing.max_detections for _, scores in predictions.values())
