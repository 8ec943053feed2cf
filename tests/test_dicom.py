"""Tests for retinanet.data.dicom on small DICOM, PNG and JPEG files written here."""

import logging
import pickle
import warnings

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
                         DeflatedExplicitVRLittleEndian,
                         ExplicitVRBigEndian,
                         ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian,
                         JPEG2000,
                         JPEG2000Lossless,
                         JPEGBaseline8Bit,
                         JPEGExtended12Bit,
                         JPEGLosslessSV1,
                         JPEGLSLossless,
                         JPEGLSNearLossless,
                         RLELossless,
                         SecondaryCaptureImageStorage,
                         )

from retinanet.data import dicom
from retinanet.data.dicom import DicomReadError, read_dicom, read_header, read_image
from retinanet.data.grey_levels import percentile_window

ROWS, COLUMNS = 48, 64


def _gradient(maximum: int, dtype) -> np.ndarray:
    """[ROWS, COLUMNS] smooth ramp 0..maximum with a bright square: every value is distinct enough."""
    column = np.linspace(0, 1, COLUMNS)[None, :]
    row = np.linspace(0, 1, ROWS)[:, None]
    ramp = 0.7 * (0.6 * column + 0.4 * row)
    ramp[10:20, 30:40] = 1.0
    return np.round(ramp * maximum).astype(dtype)


def _dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
             **elements) -> Dataset:
    """A minimal Secondary Capture dataset holding `pixels` natively (Explicit VR Little Endian)."""
    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    dataset.Modality = "CR"
    dataset.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return dataset


def _save(dataset: Dataset, path, transfer_syntax=ExplicitVRLittleEndian):
    """Write `dataset` in `transfer_syntax` (compressing with pydicom's encoders when needed)."""
    if transfer_syntax.is_compressed:
        dataset.compress(transfer_syntax)
    elif transfer_syntax == ExplicitVRBigEndian:
        # pydicom writes the pixel bytes as they are: give them in big-endian order.
        pixels = dataset.pixel_array
        dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.save_as(path, enforce_file_format=True)
    return path


def _to_jpeg_baseline(dataset: Dataset) -> Dataset:
    """Re-encode an 8-bit grey dataset as RSNA does: JPEG Baseline encapsulated by pydicom."""
    encoded_ok, encoded = cv2.imencode(".jpg", dataset.pixel_array, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert encoded_ok
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.add(DataElement(0x7FE00010, "OB", encapsulate([encoded.tobytes()]), is_undefined_length=True))
    return dataset


def _jpeg_baseline_dicom(path, image: np.ndarray):
    _to_jpeg_baseline(_dataset(image)).save_as(path, enforce_file_format=True)
    return path


TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless]


# ----------------------------------------------------------------------------- grey levels


def test_8bit_monochrome2_is_returned_exactly(tmp_path):
    pixels = _gradient(255, np.uint8)
    image = read_dicom(_save(_dataset(pixels), tmp_path / "a.dcm"))
    assert image.dtype == np.uint8 and image.shape == (ROWS, COLUMNS)
    np.testing.assert_array_equal(image, pixels)


def test_fewer_than_8_bits_stored_are_stretched(tmp_path):
    pixels = np.array([[0, 5, 15]] * 2, np.uint8)
    image = read_dicom(_save(_dataset(pixels, bits_stored=4), tmp_path / "4bit.dcm"))
    np.testing.assert_array_equal(image[0], [0, 85, 255])


def test_monochrome1_is_inverted_to_look_like_monochrome2(tmp_path):
    pixels = _gradient(255, np.uint8)
    monochrome2 = read_dicom(_save(_dataset(pixels), tmp_path / "m2.dcm"))
    monochrome1 = read_dicom(_save(_dataset(pixels, "MONOCHROME1"), tmp_path / "m1.dcm"))
    np.testing.assert_array_equal(monochrome1, 255 - monochrome2)


def test_16bit_rescale_and_window_are_applied(tmp_path):
    # Stored s -> rescaled 2 s - 1000; window 1000 +- 200 in rescaled units.
    stored = np.array([[100, 900, 1000, 1050, 1500, 4095]] * 4, np.uint16)
    dataset = _dataset(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=1000, WindowWidth=400)
    image = read_dicom(_save(dataset, tmp_path / "w.dcm"))[0]
    assert image[0] == 0 and image[1] == 0  # below and at the bottom of the window
    assert image[4] == 255 and image[5] == 255  # above the window
    # DICOM LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) of the output range.
    assert image[2] == pytest.approx(255 * ((1000 - 999.5) / 399 + 0.5), abs=1.0)
    assert image[3] == pytest.approx(255 * ((1100 - 999.5) / 399 + 0.5), abs=1.0)


def test_monochrome1_window_is_inverted(tmp_path):
    stored = np.array([[0, 4095]] * 2, np.uint16)
    dataset = _dataset(stored, "MONOCHROME1", bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    np.testing.assert_array_equal(read_dicom(_save(dataset, tmp_path / "w1.dcm"))[0], [255, 0])


def test_voi_lut_sequence_is_applied_and_keeps_its_direction(tmp_path):
    stored = np.array([[0, 64, 255, 1000]] * 2, np.uint16)
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add(DataElement(0x00283006, "US", [255 - value for value in range(256)]))  # an inverting LUT
    dataset = _dataset(stored, bits_stored=12, VOILUTSequence=Sequence([lut]))
    image = read_dicom(_save(dataset, tmp_path / "lut.dcm"))[0]
    np.testing.assert_array_equal(image, [255, 191, 0, 0])  # beyond the LUT: its last entry


def test_8bit_voi_lut_with_more_than_256_entries(tmp_path):
    stored = np.array([[0, 255, 256, 1000, 4095]] * 2, np.uint16)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 8]
    lut.add(DataElement(0x00283006, "US", [value // 16 for value in range(4096)]))
    dataset = _dataset(stored, bits_stored=12, VOILUTSequence=Sequence([lut]))
    image = read_dicom(_save(dataset, tmp_path / "lut8.dcm"))[0]
    np.testing.assert_array_equal(image, [0, 15, 16, 62, 255])


def test_16bit_without_window_uses_a_percentile_window(tmp_path):
    stored = _gradient(3000, np.uint16) + 500
    image = read_dicom(_save(_dataset(stored, bits_stored=12), tmp_path / "p.dcm"))
    assert image.min() == 0 and image.max() == 255
    assert np.corrcoef(image.ravel(), stored.ravel())[0, 1] > 0.99  # monotonic, nearly linear


def test_constant_image_is_refused_as_blank(tmp_path):
    # A film of one grey level has nothing to detect: a named error, not a blank picture trained on.
    _assert_error_names(_save(_dataset(np.full((8, 8), 700, np.uint16), bits_stored=12), tmp_path / "c.dcm"),
                        "every decoded pixel is 700", "blank")


def test_constant_percentile_window_does_not_divide_by_zero():
    np.testing.assert_array_equal(percentile_window(np.full((8, 8), 700, np.uint16)), 0)


def test_rgb_is_converted_to_grey(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[0] = 128  # grey stays grey
    pixels[1] = (255, 0, 0)
    pixels[2] = (0, 255, 0)
    image = read_dicom(_save(_dataset(pixels, "RGB"), tmp_path / "rgb.dcm"))
    assert image.shape == (4, 4)
    np.testing.assert_array_equal(image[0], 128)
    assert abs(int(image[1, 0]) - 76) <= 1 and abs(int(image[2, 0]) - 150) <= 1  # BT.601 luma


def test_multi_frame_returns_the_first_frame(tmp_path):
    frames = np.stack([_gradient(255, np.uint8), np.full((ROWS, COLUMNS), 7, np.uint8)])
    image = read_dicom(_save(_dataset(frames), tmp_path / "frames.dcm"))
    np.testing.assert_array_equal(image, frames[0])


# ----------------------------------------------------------------------------- transfer syntaxes


def test_jpeg_baseline_is_close_to_the_source(tmp_path):
    pixels = _gradient(255, np.uint8)
    image = read_dicom(_jpeg_baseline_dicom(tmp_path / "jpeg.dcm", pixels))
    error = np.abs(image.astype(int) - pixels)
    assert error.max() <= 12 and error.mean() < 2.0


@pytest.mark.parametrize("transfer_syntax", [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
                                             JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless],
                         ids=lambda uid: uid.keyword)
def test_runtime_plugins_decode_the_compressed_syntaxes(transfer_syntax):
    # The test extra adds pyjpegls only to write JPEG-LS files; reading must not depend on it.
    assert "pylibjpeg" in get_decoder(transfer_syntax).available_plugins


@pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES, ids=lambda uid: uid.keyword)
def test_8bit_transfer_syntaxes_are_exact(tmp_path, transfer_syntax):
    pixels = _gradient(255, np.uint8)
    path = _save(_dataset(pixels), tmp_path / "t.dcm", transfer_syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == transfer_syntax
    np.testing.assert_array_equal(read_dicom(path), pixels)


@pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES, ids=lambda uid: uid.keyword)
def test_16bit_transfer_syntaxes_match_the_uncompressed_reading(tmp_path, transfer_syntax):
    stored = _gradient(4000, np.uint16)
    expected = read_dicom(_save(_dataset(stored, bits_stored=12), tmp_path / "native.dcm"))
    path = _save(_dataset(stored, bits_stored=12), tmp_path / "t.dcm", transfer_syntax)
    np.testing.assert_array_equal(read_dicom(path), expected)


# ----------------------------------------------------------------------------- errors


def _assert_error_names(path, *reason_words):
    with pytest.raises(DicomReadError) as raised:
        read_dicom(path)
    message = str(raised.value)
    assert str(path) in message
    for word in reason_words:
        assert word in message.lower()
    return raised.value


@pytest.mark.parametrize("make", ["native", "jpeg"])
def test_truncated_file(tmp_path, make):
    source = tmp_path / "whole.dcm"
    if make == "native":
        _save(_dataset(_gradient(255, np.uint8)), source)
    else:
        _jpeg_baseline_dicom(source, _gradient(255, np.uint8))
    data = source.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 200])
    _assert_error_names(truncated)


def test_text_file_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("patientId,x,y,width,height,Target\n" * 20)
    _assert_error_names(path, "not a dicom")


def test_dicom_without_pixel_data(tmp_path):
    dataset = _dataset(_gradient(255, np.uint8))
    del dataset.PixelData
    _assert_error_names(_save(dataset, tmp_path / "header_only.dcm"), "no pixel data")


def test_absurd_dimensions_are_refused_before_decoding(tmp_path):
    dataset = _dataset(_gradient(255, np.uint8))
    dataset.Rows = dataset.Columns = 60000
    error = _assert_error_names(_save(dataset, tmp_path / "bomb.dcm"), "60000 x 60000", "data.decode_memory_mib")
    assert "more than the limit of 1024 mib" in str(error).lower()


def test_missing_file(tmp_path):
    _assert_error_names(tmp_path / "absent.dcm", "no such file")


def test_error_survives_pickling_and_single_message_form():
    error = pickle.loads(pickle.dumps(DicomReadError("/data/a.dcm", "truncated file")))
    assert str(error) == "/data/a.dcm: truncated file" and error.path == "/data/a.dcm"
    rewrapped = DicomReadError(f"{error} (set data.bad_file_policy: skip)")
    assert str(pickle.loads(pickle.dumps(rewrapped))).startswith("/data/a.dcm: truncated file (")
    assert isinstance(error, ValueError)


# ----------------------------------------------------------------------------- RSNA header quirks


def _rsna_like_file(path):
    """JPEG Baseline with the RSNA header quirk: PatientAge '51' (AS wants '051Y')."""
    dataset = _dataset(_gradient(255, np.uint8), PatientID="p1", PatientSex="M", ViewPosition="PA",
                       BodyPartExamined="CHEST")
    dataset.add(DataElement(0x00101010, "AS", "51", validation_mode=pydicom_config.IGNORE))
    _to_jpeg_baseline(dataset).save_as(path, enforce_file_format=True)
    return path


def test_rsna_patient_age_is_read_silently(tmp_path, caplog):
    path = _rsna_like_file(tmp_path / "rsna.dcm")
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="pydicom"):
        warnings.simplefilter("always")
        read_dicom(path)
        header = read_header(path)
    assert [str(warning.message) for warning in caught] == []
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert header["PatientAge"] == "51"
    assert warnings.filters == filters_before  # nothing silenced for the rest of the program


def test_only_header_quirk_warnings_are_silenced(tmp_path, caplog):
    """pydicom warns (and logs) about some invalid values on access, e.g. IS '1.5'; the reader's
    guard hides only those, and only inside the reader."""
    dataset = _dataset(_gradient(255, np.uint8))
    dataset.add(DataElement(0x00200013, "IS", "1.5", validation_mode=pydicom_config.IGNORE))
    path = _save(dataset, tmp_path / "quirk.dcm")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="pydicom"):
        warnings.simplefilter("always")
        with dicom._quiet_header_quirks():
            _ = pydicom.dcmread(path).InstanceNumber
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        assert caplog.records == []
        _ = pydicom.dcmread(path).InstanceNumber  # outside the reader: pydicom's warning is back
    messages = [str(warning.message) for warning in caught]
    assert messages[0] == "an unrelated warning"
    assert any("Invalid value for VR IS" in message for message in messages[1:])
    assert any("Invalid value for VR IS" in record.getMessage() for record in caplog.records)


def test_header_quirk_in_a_field_the_reader_uses_is_silent(tmp_path):
    """NumberOfFrames '1.0' (IS wants '1'): pydicom warns on access; read_dicom must not."""
    pixels = _gradient(255, np.uint8)
    dataset = _dataset(pixels)
    dataset.add(DataElement(0x00280008, "IS", "1.0", validation_mode=pydicom_config.IGNORE))
    path = _save(dataset, tmp_path / "frames_quirk.dcm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_dicom(path)
        assert [str(warning.message) for warning in caught] == []
        _ = pydicom.dcmread(path).NumberOfFrames  # the test bites: pydicom alone does warn
    assert any("Invalid value for VR IS" in str(warning.message) for warning in caught)
    np.testing.assert_array_equal(image, pixels)


def test_malformed_value_in_a_used_field(tmp_path):
    dataset = _dataset(np.zeros((4, 4), np.uint16), bits_stored=12, WindowCenter="1.5", WindowWidth="20")
    path = _save(dataset, tmp_path / "bad_window.dcm")
    data = path.read_bytes()
    assert data.count(b"1.5 ") == 1
    path.write_bytes(data.replace(b"1.5 ", b"1,5 "))  # pydicom cannot even build such a value
    _assert_error_names(path, "invalid windowcenter")


def test_read_header_fields(tmp_path):
    path = _rsna_like_file(tmp_path / "rsna.dcm")
    header = read_header(path)
    assert header["PatientID"] == "p1" and header["ViewPosition"] == "PA" and header["Modality"] == "CR"
    assert header["Rows"] == ROWS and header["Columns"] == COLUMNS and header["BitsStored"] == 8
    assert header["PhotometricInterpretation"] == "MONOCHROME2"
    assert header["TransferSyntaxUID"] == JPEGBaseline8Bit
    with pytest.raises(DicomReadError, match="not a DICOM"):
        (tmp_path / "x.dcm").write_text("hello")
        read_header(tmp_path / "x.dcm")


# ----------------------------------------------------------------------------- read_image


def test_read_image_png_8_and_16_bit_and_jpeg(tmp_path):
    pixels = _gradient(255, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)

    cv2.imwrite(str(tmp_path / "colour.png"), np.dstack([pixels] * 3))
    np.testing.assert_array_equal(read_image(tmp_path / "colour.png"), pixels)

    deep = _gradient(4000, np.uint16) + 100
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    assert np.corrcoef(image.ravel(), deep.ravel())[0, 1] > 0.99

    cv2.imwrite(str(tmp_path / "a.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - pixels).max() <= 12


def test_read_image_dispatches_dicom_by_suffix_or_preamble(tmp_path):
    pixels = _gradient(255, np.uint8)
    _save(_dataset(pixels), tmp_path / "a.dcm")
    np.testing.assert_array_equal(read_image(tmp_path / "a.dcm"), pixels)
    (tmp_path / "a.dcm").rename(tmp_path / "no_suffix")
    np.testing.assert_array_equal(read_image(tmp_path / "no_suffix"), pixels)


def test_read_image_errors_name_the_path(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DicomReadError, match="broken.png"):
        read_image(broken)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(DicomReadError, match="notes.txt.*unsupported"):
        read_image(other)
