"""Read chest X-ray images (DICOM, PNG, JPEG, ...) as 8-bit grey `[H, W]` arrays.

The RSNA files are 8-bit MONOCHROME2 JPEG Baseline DICOMs; they take a fast path that returns
the decoded values untouched. Other sources bring MONOCHROME1, 12-16 bit data, rescale and
VOI LUT / window settings, colour and multi-frame files; those are mapped to the same
`uint8 [H, W]` form with pydicom's own processing functions (`retinanet.data.grey_levels`).

Before any decoder runs, the memory the decode would take is judged from the sizes the file
declares, against `memory_limit_mib` (the config's `data.decode_memory_mib`), and a compressed
frame's own header must agree with the DICOM header; after it, a blank picture is refused
(`retinanet.data.decode_checks`). Every failure (not DICOM, no pixels, truncated, corrupt, over
the memory budget, contradictory, blank, unsupported file) raises `DicomReadError`, whose message
names the file and the reason.
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
from pydicom.pixels import pixel_array

from retinanet.data import decode_checks
from retinanet.data.decode_checks import DEFAULT_LIMIT_MIB, ImageCheckError
from retinanet.data.grey_levels import percentile_window, to_grey_uint8
from retinanet.data.stream_headers import OversizedHeaderError, StreamHeaderError, picture_header
from retinanet.errors import UserError

# The version of what `read_image` returns for a file. The preprocessed-image cache keys on it:
# bump it with any change that alters the pixels read (a window rule, an inversion, a decoder
# choice), so that no cache filled by the old reader is reused.
READER_VERSION = 2  # 2: blank pictures and contradictory headers are refused

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


def is_dicom_file(path) -> bool:
    """True for a DICOM file: by its suffix (DICOM_SUFFIXES) or its 'DICM' marker."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path)


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


def _declared_size(dataset: pydicom.Dataset) -> tuple[int, int, int, int, int, int]:
    """(rows, columns, frames, samples, bits allocated, bits stored) from the header; ImageCheckError
    for missing pixel data or impossible values."""
    if not any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageCheckError("the DICOM file has no pixel data (header-only, or truncated before the pixels)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits_allocated = int(dataset.get("BitsAllocated", 8) or 8)
        bits_stored = int(dataset.get("BitsStored", bits_allocated) or bits_allocated)
    except (AttributeError, TypeError, ValueError) as error:
        raise ImageCheckError(f"missing or invalid image size in the header ({error})") from None
    if min(rows, columns, frames) < 1:
        raise ImageCheckError(f"invalid image size {rows} x {columns} x {frames} frames")
    if samples not in (1, 3):
        raise ImageCheckError(f"SamplesPerPixel {samples} (1 for grey or 3 for colour)")
    if bits_allocated not in (1, 8, 16, 32, 64) or not 1 <= bits_stored <= bits_allocated:
        raise ImageCheckError(f"BitsAllocated {bits_allocated} with BitsStored {bits_stored}")
    return rows, columns, frames, samples, bits_allocated, bits_stored


def _check_before_decoding(dataset: pydicom.Dataset, file_size: int, limit_mib: float) -> None:
    """The declared sizes against the budget, the compressed frame against the header, the values."""
    rows, columns, frames, samples, bits_allocated, bits_stored = _declared_size(dataset)
    decode_checks.check_declared_image("declared image", rows, columns, samples, bits_allocated, file_size,
                                       limit_mib)
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
    header = decode_checks.frame_header(dataset, transfer_syntax, frames)
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    if header is not None:
        decode_checks.check_frame_agrees(header, rows, columns, samples, bits_allocated, bits_stored, signed,
                                         transfer_syntax)
    elif "PixelData" in dataset:
        decode_checks.check_native_length(dataset)
    decode_checks.check_pixel_values(dataset, bits_stored)


def read_dicom(path, *, memory_limit_mib: float = DEFAULT_LIMIT_MIB) -> np.ndarray:
    """Read a DICOM file's first frame as a `uint8 [H, W]` grey image (MONOCHROME2 look).

    Any transfer syntax pydicom can decode with the installed plugins is accepted. Processing:
    Palette/RGB/YBR -> grey; Modality LUT or RescaleSlope/Intercept; VOI LUT or
    WindowCenter/WindowWidth when present, else a 0.5-99.5 percentile window for data that is
    not 8 bit; MONOCHROME1 inverted. 8-bit MONOCHROME2 without rescale or VOI is returned
    exactly as stored (1-7 bit data is stretched to 0..255). `memory_limit_mib` bounds the memory
    the decode may take, judged before decoding from the file's declared sizes.

    Raises:
        DicomReadError: not DICOM, no pixel data, over the memory budget, a compressed frame whose
            own header contradicts the DICOM header, impossible rescale or window values,
            truncated or corrupt data, no decoder, or a blank picture; the message names `path`
            and the reason.
    """
    path = os.fspath(path)
    _require_file(path)
    try:
        file_size = decode_checks.check_file_size(path, memory_limit_mib)
        decode_checks.check_deflated_size(path, memory_limit_mib)
    except ImageCheckError as error:
        raise DicomReadError(path, str(error)) from None
    dataset = _read_dataset(path, stop_before_pixels=False)
    try:
        _check_before_decoding(dataset, file_size, memory_limit_mib)
    except ImageCheckError as error:
        raise DicomReadError(path, str(error)) from None
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
    try:
        # index=0 decodes only the first frame of a multi-frame file.
        pixels = pixel_array(dataset, index=0)
        grey = to_grey_uint8(pixels, dataset)
    except Exception as error:  # decoders and LUT code raise many types; name them all
        raise DicomReadError(
            path,
            f"cannot decode the pixel data ({getattr(transfer_syntax, 'name', transfer_syntax)}): "
            f"{type(error).__name__}: {error}",
        ) from error
    try:
        decode_checks.check_not_blank(pixels, grey)
    except ImageCheckError as error:
        raise DicomReadError(path, str(error)) from None
    return grey


def _read_picture(path: str, memory_limit_mib: float) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF -> uint8 [H, W]: colour to grey, 16-bit and float by the percentile window."""
    try:
        file_size = decode_checks.check_file_size(path, memory_limit_mib)
        header = picture_header(path)
        decode_checks.check_declared_image(f"declared {header.kind} image", header.rows, header.columns,
                                           header.components, header.precision, file_size, memory_limit_mib)
    except OversizedHeaderError as error:
        raise DicomReadError(path, str(decode_checks.over_budget(f"{error}: more", memory_limit_mib))) from None
    except StreamHeaderError as error:
        raise DicomReadError(path, str(error)) from None
    except ImageCheckError as error:
        raise DicomReadError(path, str(error)) from None
    try:
        # imdecode of the bytes, unlike imread, also handles non-ASCII paths on every platform.
        encoded = np.fromfile(path, dtype=np.uint8)
        picture = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size else None
    except (OSError, cv2.error) as error:
        raise DicomReadError(path, f"cannot read the image file ({error})") from error
    if picture is None:
        raise DicomReadError(path, "not a readable image file (OpenCV could not decode it)")
    decoded = picture
    if picture.ndim == 3:
        conversion = cv2.COLOR_BGRA2GRAY if picture.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        if picture.shape[2] == 1:
            picture = picture[..., 0]
        else:
            picture = cv2.cvtColor(picture, conversion)
    grey = np.ascontiguousarray(picture) if picture.dtype == np.uint8 else percentile_window(picture)
    try:
        decode_checks.check_not_blank(decoded, grey)
    except ImageCheckError as error:
        raise DicomReadError(path, str(error)) from None
    return grey


def read_image(path, *, memory_limit_mib: float = DEFAULT_LIMIT_MIB) -> np.ndarray:
    """Read any supported image file as `uint8 [H, W]`.

    `.dcm`/`.dicom` files and files with the 'DICM' marker go to `read_dicom`;
    .png/.jpg/.jpeg/.bmp/.tif/.tiff are decoded by OpenCV (16-bit data through the same
    percentile window as DICOM), after their header's size is judged against `memory_limit_mib`
    as for DICOM. Anything else raises DicomReadError naming the path.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    _require_file(path)
    if is_dicom_file(path):
        return read_dicom(path, memory_limit_mib=memory_limit_mib)
    if suffix in IMAGE_SUFFIXES:
        return _read_picture(path, memory_limit_mib)
    raise DicomReadError(
        path, f"unsupported file type {suffix!r} (expected DICOM or one of {', '.join(IMAGE_SUFFIXES)})"
    )


def read_source_header(path) -> pydicom.Dataset:
    """The whole header of a DICOM file without its pixel data: what a report on the film copies
    (patient, study and series). DicomReadError naming the path, as for `read_image`."""
    return _read_dataset(os.fspath(path), stop_before_pixels=True)


@contextlib.contextmanager
def ignoring_warnings(message_pattern: str):
    """Ignore the warnings whose message matches `message_pattern`, in this block only. Held under
    the readers' lock: warnings filters are process-wide, and the readers change them from several
    threads (the block must not read files itself)."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message_pattern)
        yield


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
