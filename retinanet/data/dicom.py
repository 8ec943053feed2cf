"""Read chest X-ray images (DICOM, PNG, JPEG, ...) as 8-bit grey `[H, W]` arrays.

The RSNA files are 8-bit MONOCHROME2 JPEG Baseline DICOMs; they take a fast path that returns
the decoded values untouched. Other sources bring MONOCHROME1, 12-16 bit data, rescale and
VOI LUT / window settings, colour and multi-frame files; those are mapped to the same
`uint8 [H, W]` form with pydicom's own processing functions.

Every failure (not DICOM, no pixels, truncated, corrupt, absurd size, unsupported file)
raises `DicomReadError`, whose message names the file and the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    pixel_array,
)

from retinanet.errors import UserError

# Memory-bomb guard: a header may declare up to 65535 x 65535 pixels per frame and any number
# of frames; refuse anything beyond this many samples before a decoder allocates it.
MAX_PIXELS = 16384 * 16384

# The robust window used when a >8-bit image carries no window of its own.
LOW_PERCENT = 0.5
HIGH_PERCENT = 99.5
# Percentiles are estimated on a strided sample of at most about this many pixels: exact
# enough for a window and much cheaper on 3000 x 3000 detector images.
PERCENTILE_SAMPLE_PIXELS = 1_000_000

# The version of what `read_image` returns for a file. The preprocessed-image cache keys on it:
# bump it with any change that alters the pixels read (a window rule, an inversion, a decoder
# choice), so that no cache filled by the old reader is reused.
READER_VERSION = 1

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

HEADER_FIELDS = (
    "PatientID",
    "PatientSex",
    "PatientAge",
    "ViewPosition",
    "Modality",
    "BodyPartExamined",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsStored",
)

# Header quirks that are harmless for reading pixels, e.g. the RSNA PatientAge '51' (AS wants
# '051Y'). Only these messages are silenced, and only while this module reads a file.
# (warnings filters match from the start of the message, so both alternatives do too)
_HEADER_QUIRK_PATTERN = re.compile(r"Invalid value for VR|Value .* is not valid for elements with a VR of")
_PYDICOM_LOGGER = logging.getLogger("pydicom")
_TRUNCATION_PATTERN = r"End of file reached"
# warnings.catch_warnings swaps process-wide state, and the cache and the input pipeline read
# files from several threads: one lock keeps their filter changes from interleaving. It is held
# only while a header is parsed; decoding the pixels runs in parallel.
_WARNINGS_LOCK = threading.Lock()
_NUMERIC_KEYWORDS = (
    "Rows", "Columns", "BitsStored", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
)
_USED_KEYWORDS = HEADER_FIELDS + _NUMERIC_KEYWORDS[3:] + ("PlanarConfiguration", "VOILUTFunction")


class DicomReadError(UserError, ValueError):
    """An image file could not be read.

    `DicomReadError(path, reason)` reads `"<path>: <reason>"` and keeps both as attributes.
    A single argument is taken as the whole message (`path` and `reason` are then None), so
    callers can re-raise an error with advice added.
    """

    def __init__(self, path, reason=None):
        # Every argument goes into `args` so that the error survives pickling (multiprocessing).
        super().__init__(*((str(path),) if reason is None else (str(path), str(reason))))
        self.path = None if reason is None else str(path)
        self.reason = None if reason is None else str(reason)

    def __str__(self):
        return self.args[0] if self.reason is None else f"{self.path}: {self.reason}"


def _drop_header_quirk_record(record: logging.LogRecord) -> bool:
    """Logging filter: False for pydicom's header-quirk messages (pydicom logs each warning too)."""
    return not _HEADER_QUIRK_PATTERN.search(record.getMessage())


@contextlib.contextmanager
def _quiet_header_quirks():
    """Silence pydicom's header-quirk warnings and log records, for this block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_HEADER_QUIRK_PATTERN.pattern, category=UserWarning)
        _PYDICOM_LOGGER.addFilter(_drop_header_quirk_record)
        try:
            yield
        finally:
            _PYDICOM_LOGGER.removeFilter(_drop_header_quirk_record)


def has_dicom_preamble(path) -> bool:
    """True if the file carries the 'DICM' marker after its 128-byte preamble."""
    try:
        with open(path, "rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False


def _require_file(path) -> None:
    if not os.path.exists(path):
        raise DicomReadError(path, "no such file")
    if not os.path.isfile(path):
        raise DicomReadError(path, "not a regular file")


def _read_dataset(path, *, stop_before_pixels: bool) -> pydicom.Dataset:
    """dcmread with every failure turned into a DicomReadError naming the path.

    The header values this module uses are converted here, under the quirk filter: pydicom
    validates (and warns about) a value when it is first accessed, then keeps the converted
    element, so later reads of the same dataset stay quiet without a filter.
    """
    _require_file(path)
    with _WARNINGS_LOCK, _quiet_header_quirks():
        try:
            with warnings.catch_warnings():
                # pydicom only warns when the file ends inside the encapsulated pixel data,
                # and then drops the pixel data: that file is truncated, not pixel-less.
                warnings.filterwarnings("error", message=_TRUNCATION_PATTERN, category=UserWarning)
                dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except UserWarning as error:  # ours above, or any other if the program turns warnings into errors
            reason = "truncated file" if re.match(_TRUNCATION_PATTERN, str(error)) else "unreadable DICOM header"
            raise DicomReadError(path, f"{reason} ({error})") from error
        except InvalidDicomError as error:
            raise DicomReadError(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from error
        except Exception as error:  # pydicom raises many types for corrupt or truncated headers
            raise DicomReadError(path, f"corrupt or truncated DICOM header ({type(error).__name__}: "
                                       f"{error})") from error
        for keyword in _USED_KEYWORDS:
            try:
                value = dataset.get(keyword)
            except Exception as error:
                raise DicomReadError(path, f"invalid {keyword} in the header ({error})") from error
            # pydicom keeps a number it cannot parse as a string (after a warning we silence).
            items = value if isinstance(value, MultiValue) else [value]
            if keyword in _NUMERIC_KEYWORDS and any(isinstance(item, str) and item.strip() for item in items):
                raise DicomReadError(path, f"invalid {keyword} in the header: {value!r} is not a number")
    return dataset


def _check_declared_size(path, dataset: pydicom.Dataset) -> None:
    """Reject missing pixel data and absurd dimensions from the header, before decoding."""
    if not any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(path, "the DICOM file has no pixel data (header-only, or truncated before the pixels)")
    try:
        rows = int(dataset.Rows)
        columns = int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as error:
        raise DicomReadError(path, f"missing or invalid image size in the header ({error})") from error
    if min(rows, columns, frames, samples) < 1:
        raise DicomReadError(path, f"invalid image size {rows} x {columns} x {frames} frames x {samples} samples")
    total = rows * columns * frames * samples
    if total > MAX_PIXELS:
        raise DicomReadError(
            path,
            f"declared image size {rows} x {columns} x {frames} frames x {samples} samples "
            f"= {total} values exceeds the limit of {MAX_PIXELS}",
        )


def percentile_window(values, low_percent: float = LOW_PERCENT, high_percent: float = HIGH_PERCENT) -> np.ndarray:
    """[H, W] numbers -> [H, W] uint8, the `low_percent`..`high_percent` range mapped to 0..255.

    Falls back to the full min..max range when the percentiles coincide (few distinct values);
    a constant image becomes all zeros.
    """
    values = np.asarray(values)
    step = max(1, int(np.sqrt(values.size / PERCENTILE_SAMPLE_PIXELS)))
    sample = values[::step, ::step] if values.ndim == 2 else values.ravel()[:: step * step]
    low, high = np.percentile(sample, [low_percent, high_percent])
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    return _scale_to_uint8(values, low, high)


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map low -> 0 and high -> 255, clipped and rounded."""
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _value(dataset: pydicom.Dataset, keyword: str):
    """The element's value, or None when it is missing or empty (some files carry empty ones)."""
    value = dataset.get(keyword)
    return None if value is None or value == "" else value


def _has_modality_transform(dataset: pydicom.Dataset) -> bool:
    """True if a Modality LUT or a non-identity rescale changes the stored values."""
    if dataset.get("ModalityLUTSequence"):
        return True
    slope = _value(dataset, "RescaleSlope")
    intercept = _value(dataset, "RescaleIntercept")
    if slope is None or intercept is None:
        return False
    return float(slope) != 1.0 or float(intercept) != 0.0


def _voi_lut_item(dataset: pydicom.Dataset):
    """The VOI LUT pydicom's apply_voi_lut would use (it prefers it to a window), else None."""
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _has_window(dataset: pydicom.Dataset) -> bool:
    return _value(dataset, "WindowCenter") is not None and _value(dataset, "WindowWidth") is not None


def _apply_voi_to_uint8(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """Apply the file's VOI LUT or window with pydicom, then map its output range to 0..255.

    pydicom's output range depends on BitsStored, signedness, rescale and the LUT, so rather
    than re-deriving it we push two probe values from far below and far above the window
    through the same function; their outputs are the ends of the range. They are sorted, so
    an inverting LUT still inverts; and they are the LUT's own first and last entries, which
    also covers LUTs that use fewer bits than their descriptor declares.
    """
    lut_item = _voi_lut_item(dataset)
    if lut_item is not None:
        # A LUT is indexed by integers; rescaled values are floats.
        values = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        entries_code, first_mapped, bits_per_entry = (int(value) for value in lut_item.LUTDescriptor)
        entries = entries_code or 2**16
        if bits_per_entry == 8:
            # pydicom 3.0 indexes an 8-bit LUT through a uint8 array, so inputs 256 or more
            # past the first mapped value wrap around; a 16-bit index gives the right lookup.
            lut_item.LUTDescriptor = [entries_code, first_mapped, 16]
        probe = np.array([first_mapped - 1, first_mapped + entries - 1], dtype=np.int64)
    else:
        probe = np.array([-1e12, 1e12], dtype=np.float64)
    with np.errstate(over="ignore"):  # the SIGMOID function overflows exp() for the probe
        mapped = apply_voi_lut(values, dataset, index=0)
        low, high = np.sort(apply_voi_lut(probe, dataset, index=0).astype(np.float64))
    if low == high:
        return np.zeros(values.shape, np.uint8)
    return _scale_to_uint8(mapped, low, high)


def _colour_to_grey(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB -> [H, W] grey: the luma (Y) of pydicom's RGB -> YBR_FULL conversion."""
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(convert_color_space(pixels, "RGB", "YBR_FULL")[..., 0])
    # pydicom converts only 8-bit colour; same BT.601 weights, then window the >8-bit result.
    return percentile_window(cv2.cvtColor(pixels.astype(np.float32), cv2.COLOR_RGB2GRAY))


def _to_grey_uint8(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """First-frame pixels as decoded by pydicom -> [H, W] uint8 that looks like MONOCHROME2."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3:
        return _colour_to_grey(pixels)

    needs_modality = _has_modality_transform(dataset)
    needs_voi = _voi_lut_item(dataset) is not None or _has_window(dataset)
    if pixels.dtype == np.uint8 and not needs_modality and not needs_voi:
        bits_stored = int(dataset.get("BitsStored") or 8)
        if bits_stored >= 8:
            grey = pixels  # the RSNA fast path: stored values are already display values
        else:  # 1-7 bit data (masks, old scanners) would look black: stretch its full range
            grey = _scale_to_uint8(pixels, 0, 2**bits_stored - 1)
    else:
        values = apply_modality_lut(pixels, dataset) if needs_modality else pixels
        if needs_voi:
            grey = _apply_voi_to_uint8(values, dataset)
        elif values.dtype == np.uint8:
            grey = values
        else:
            grey = percentile_window(values)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values white; invert after windowing, as the display would.
        grey = 255 - grey
    return np.ascontiguousarray(grey, dtype=np.uint8)


def read_dicom(path) -> np.ndarray:
    """Read a DICOM file's first frame as a `uint8 [H, W]` grey image (MONOCHROME2 look).

    Any transfer syntax pydicom can decode with the installed plugins is accepted. Processing:
    Palette/RGB/YBR -> grey; Modality LUT or RescaleSlope/Intercept; VOI LUT or
    WindowCenter/WindowWidth when present, else a 0.5-99.5 percentile window for data that is
    not 8 bit; MONOCHROME1 inverted. 8-bit MONOCHROME2 without rescale or VOI is returned
    exactly as stored (1-7 bit data is stretched to 0..255).

    Raises:
        DicomReadError: not DICOM, no pixel data, absurd declared size, truncated or corrupt
            data, or no decoder; the message names `path` and the reason.
    """
    path = os.fspath(path)
    dataset = _read_dataset(path, stop_before_pixels=False)
    _check_declared_size(path, dataset)
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
    try:
        # index=0 decodes only the first frame of a multi-frame file.
        pixels = pixel_array(dataset, index=0)
        return _to_grey_uint8(pixels, dataset)
    except Exception as error:  # decoders and LUT code raise many types; name them all
        raise DicomReadError(
            path,
            f"cannot decode the pixel data ({getattr(transfer_syntax, 'name', transfer_syntax)}): "
            f"{type(error).__name__}: {error}",
        ) from error


def _read_picture(path: str) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF -> uint8 [H, W]: colour to grey, 16-bit and float by the percentile window."""
    try:
        # imdecode of the bytes, unlike imread, also handles non-ASCII paths on every platform.
        encoded = np.fromfile(path, dtype=np.uint8)
        picture = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size else None
    except (OSError, cv2.error) as error:
        raise DicomReadError(path, f"cannot read the image file ({error})") from error
    if picture is None:
        raise DicomReadError(path, "not a readable image file (OpenCV could not decode it)")
    if picture.ndim == 3:
        conversion = cv2.COLOR_BGRA2GRAY if picture.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        if picture.shape[2] == 1:
            picture = picture[..., 0]
        else:
            picture = cv2.cvtColor(picture, conversion)
    if picture.dtype == np.uint8:
        return np.ascontiguousarray(picture)
    return percentile_window(picture)


def read_image(path) -> np.ndarray:
    """Read any supported image file as `uint8 [H, W]`.

    `.dcm`/`.dicom` files and files with the 'DICM' marker go to `read_dicom`;
    .png/.jpg/.jpeg/.bmp/.tif/.tiff are decoded by OpenCV (16-bit data through the same
    percentile window as DICOM). Anything else raises DicomReadError naming the path.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    _require_file(path)
    if suffix in DICOM_SUFFIXES or has_dicom_preamble(path):
        return read_dicom(path)
    if suffix in IMAGE_SUFFIXES:
        return _read_picture(path)
    raise DicomReadError(
        path, f"unsupported file type {suffix!r} (expected DICOM or one of {', '.join(IMAGE_SUFFIXES)})"
    )


def read_header(path) -> dict:
    """A few header fields for exploration, read without the pixel data.

    Returns a dict with the keys of `HEADER_FIELDS` plus `TransferSyntaxUID`: strings, or int
    for Rows, Columns and BitsStored; None where the file lacks the field.
    """
    path = os.fspath(path)
    dataset = _read_dataset(path, stop_before_pixels=True)
    header = {}
    for keyword in HEADER_FIELDS:
        value = dataset.get(keyword)
        try:
            if value is not None:
                value = int(value) if keyword in ("Rows", "Columns", "BitsStored") else str(value)
        except (TypeError, ValueError) as error:
            raise DicomReadError(path, f"invalid {keyword} in the header ({error})") from error
        header[keyword] = value
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    header["TransferSyntaxUID"] = None if transfer_syntax is None else str(transfer_syntax)
    return header
