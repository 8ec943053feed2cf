"""The checks an image file passes before and after its pixels are decoded.

Before: the memory a decode would take, judged from sizes the file declares (the file itself,
the DICOM header, the compressed frame's own header, the inflated size of a Deflate body) against
the budget `data.decode_memory_mib`; the frame's header must agree with the DICOM header; the
rescale and window values must be real numbers. After: the picture must not be blank. Each
failure raises `ImageCheckError` with the reason, which the reader (`retinanet.data.dicom`) turns
into a `ImageCheckError` naming the file: one hostile file is a named error (or, under
`data.bad_file_policy: skip`, a listed skip), never an out-of-memory kill or a blank film trained on.
"""

from __future__ import annotations

import math
import os
import zlib

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (DeflatedExplicitVRLittleEndian, JPEG2000TransferSyntaxes, JPEGBaseline8Bit,
                         JPEGExtended12Bit, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes, RLELossless)

from retinanet.config import DataConfig
from retinanet.data.stream_headers import (StreamHeader, StreamHeaderError, j2k_header, jpeg_header,
                                           rle_decoded_lengths, rle_segments)

MEBIBYTE = 2**20
# Measured peak resident memory of reading one image, beyond the file's own bytes and the decoded
# frame: 30-32 bytes per pixel on 4096 x 4096 images (16-bit grey with rescale and window, the
# same as JPEG 2000, 8-bit RGB), the float64 copies of the rescale and the window and the float32
# scaling to 8 bits.
WORKING_BYTES_PER_PIXEL = 30
DEFAULT_LIMIT_MIB = DataConfig.decode_memory_mib
LIMIT_KEY = "data.decode_memory_mib"
_INFLATE_CHUNK = MEBIBYTE
# Beyond this magnitude a rescaled value no longer fits the float32 the window is computed in.
_LARGEST_RESCALED_VALUE = 1e30
# Lossy 8-bit JPEG (the RSNA syntax and its 12-bit sibling) codes unsigned samples only.
_UNSIGNED_JPEG_SYNTAXES = (JPEGBaseline8Bit, JPEGExtended12Bit)


class ImageCheckError(ValueError):
    """An image file that must not be decoded, or whose decoded picture cannot be right: the reason."""


def decode_bytes(rows: int, columns: int, samples: int, bits_allocated: int) -> int:
    """The memory (bytes) reading one frame of this size takes: the decoded samples plus the working copies."""
    return rows * columns * (WORKING_BYTES_PER_PIXEL + samples * math.ceil(bits_allocated / 8))


def _mib(size: float) -> str:
    return f"{size / MEBIBYTE:,.0f} MiB" if size >= 10 * MEBIBYTE else f"{size / MEBIBYTE:.1f} MiB"


def over_budget(what: str, limit_mib: float) -> ImageCheckError:
    """The error for a file whose declared sizes need more memory than the budget: `what` says which
    and how much, ending where "than the limit" follows."""
    return ImageCheckError(f"{what} than the limit of {limit_mib:g} MiB ({LIMIT_KEY}; raise it to read larger "
                           "images)")


def check_declared_image(what: str, rows: int, columns: int, samples: int, bits: int, file_size: int,
                         limit_mib: float) -> None:
    """ImageCheckError when decoding a `what` of this declared size would take more than the budget."""
    needed = file_size + decode_bytes(rows, columns, samples, bits)
    if needed > limit_mib * MEBIBYTE:
        raise over_budget(f"the {what} of {rows} x {columns} pixels, {samples} sample(s) of {bits} bits, needs "
                          f"about {_mib(needed)} to decode, more", limit_mib)


def check_file_size(path, limit_mib: float) -> int:
    """The file's size in bytes; ImageCheckError if reading it alone would exceed the budget."""
    size = os.path.getsize(path)
    if size > limit_mib * MEBIBYTE:
        raise over_budget(f"the file of {_mib(size)} needs as much memory to read, more", limit_mib)
    return size


def check_deflated_size(path, limit_mib: float) -> None:
    """For a Deflated Explicit VR file: inflate the body in chunks, keeping none of it, and raise
    before its inflated size passes the budget (pydicom would inflate all of it in memory first)."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # not DICOM, or a broken meta group: reading the whole file names the problem
        return
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    group_length = meta.get("FileMetaInformationGroupLength")
    if group_length is None:
        raise ImageCheckError("a deflated file without the file meta group length: cannot find its body")
    limit = limit_mib * MEBIBYTE
    inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as file:
        file.seek(128 + 4 + 12 + int(group_length))  # preamble, 'DICM', the group length element
        while chunk := file.read(_INFLATE_CHUNK):
            try:
                while chunk:
                    inflated += len(inflater.decompress(chunk, _INFLATE_CHUNK))
                    if inflated > limit:
                        raise over_budget("the deflated data set inflates to more", limit_mib)
                    chunk = inflater.unconsumed_tail
            except zlib.error as error:
                raise ImageCheckError(f"corrupt deflated data set ({error})") from None


def _first_frame(dataset: pydicom.Dataset, frames: int) -> bytes:
    try:
        return next(generate_frames(dataset.PixelData, number_of_frames=frames))
    except Exception as error:  # pydicom raises several types for broken item tags and offsets
        raise ImageCheckError(f"corrupt encapsulated pixel data ({type(error).__name__}: {error})") from None


def frame_header(dataset: pydicom.Dataset, transfer_syntax, frames: int) -> StreamHeader | None:
    """The first frame's own header for a compressed syntax (None for native data); ImageCheckError
    if the frame is not of the kind its transfer syntax names, or the syntax is not one this reader decodes."""
    if not transfer_syntax.is_transfer_syntax:
        raise ImageCheckError(f"the file meta's TransferSyntaxUID {str(transfer_syntax)[:64]!r} is not a transfer "
                              "syntax")
    if not transfer_syntax.is_compressed or transfer_syntax == DeflatedExplicitVRLittleEndian:
        return None
    name = getattr(transfer_syntax, "name", str(transfer_syntax))
    frame = _first_frame(dataset, frames)
    try:
        if transfer_syntax in JPEGTransferSyntaxes or transfer_syntax in JPEGLSTransferSyntaxes:
            header = jpeg_header(frame)
            wanted = "JPEG-LS" if transfer_syntax in JPEGLSTransferSyntaxes else "JPEG"
            if (header.kind == "JPEG-LS") != (wanted == "JPEG-LS"):
                raise StreamHeaderError(f"the frame is {header.kind} data")
            return header
        if transfer_syntax in JPEG2000TransferSyntaxes:
            return j2k_header(frame)
        if transfer_syntax == RLELossless:
            offsets = rle_segments(frame)
            return StreamHeader("RLE", segments=len(offsets),
                                segment_lengths=tuple(rle_decoded_lengths(frame, offsets)))
    except StreamHeaderError as error:
        raise ImageCheckError(f"the pixel data does not hold what its transfer syntax ({name}) names: "
                              f"{error}") from None
    raise ImageCheckError(f"pixel data compressed as {name}, which this reader does not decode")


def check_frame_agrees(header: StreamHeader, rows: int, columns: int, samples: int, bits_allocated: int,
                       bits_stored: int, signed: bool, transfer_syntax) -> None:
    """ImageCheckError where the compressed frame's own header contradicts the DICOM header."""
    def disagree(what: str) -> ImageCheckError:
        return ImageCheckError(f"the {header.kind} frame's own header disagrees with the DICOM header: {what}")

    if header.segments is not None:  # RLE: one segment per byte of every sample (PS3.5 G.2)
        expected = samples * math.ceil(bits_allocated / 8)
        if header.segments != expected:
            raise disagree(f"{header.segments} RLE segments where SamplesPerPixel {samples} and BitsAllocated "
                           f"{bits_allocated} make {expected}")
        wrong = [length for length in header.segment_lengths if length not in (rows * columns, rows * columns + 1)]
        if wrong:
            raise disagree(f"an RLE segment decodes to {wrong[0]} bytes where Rows x Columns is {rows * columns}")
        return
    if (header.rows, header.columns) != (rows, columns):
        raise disagree(f"{header.rows} x {header.columns} pixels where Rows x Columns is {rows} x {columns}")
    if header.components != samples:
        raise disagree(f"{header.components} components where SamplesPerPixel is {samples}")
    if header.precision > bits_allocated:
        raise disagree(f"{header.precision}-bit samples where BitsAllocated is {bits_allocated}")
    # pydicom decodes JPEG 2000 at the stream's own precision; JPEG and JPEG-LS samples are cut to BitsStored.
    if header.kind != "JPEG 2000" and header.precision > bits_stored:
        raise disagree(f"{header.precision}-bit samples where BitsStored is {bits_stored}")
    if header.signed is not None and header.signed != signed:
        raise disagree(f"{'signed' if header.signed else 'unsigned'} samples where PixelRepresentation is "
                       f"{int(signed)}")
    if signed and transfer_syntax in _UNSIGNED_JPEG_SYNTAXES:
        raise disagree(f"PixelRepresentation 1 (signed) on lossy {header.precision}-bit JPEG, which codes "
                       "unsigned samples")
    if header.scan_bytes is not None and header.scan_bytes < _least_scan_bytes(header):
        raise ImageCheckError(f"the {header.kind} stream's scans hold {header.scan_bytes} bytes, fewer than any "
                              f"complete {header.rows} x {header.columns} image needs ({_least_scan_bytes(header)}): "
                              "the stream is cut short or empty")
    if bits_stored > bits_allocated:
        raise ImageCheckError(f"BitsStored {bits_stored} exceeds BitsAllocated {bits_allocated}")


def _numbers(value) -> list[float]:
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return [float(item) for item in values]


def _least_scan_bytes(header: StreamHeader) -> int:
    """The fewest bytes a complete JPEG scan of this size can take: with the shortest Huffman codes, 2
    bits per 8 x 8 block of DCT data (a DC and an end-of-block code), 1 bit per sample of lossless
    data. JPEG-LS codes runs of equal pixels in fewer: no bound."""
    if header.kind == "JPEG":
        return math.ceil(header.rows / 8) * math.ceil(header.columns / 8) // 4
    if header.kind == "JPEG lossless":
        return header.rows * header.columns // 8
    return 0


def check_native_length(dataset: pydicom.Dataset) -> None:
    """ImageCheckError when uncompressed pixel data is not the length Rows x Columns x samples x
    BitsAllocated x frames makes (one byte of padding allowed): the header describes other pixels."""
    try:
        expected = get_expected_length(dataset, "bytes")
    except (AttributeError, TypeError, ValueError) as error:  # an element the size needs is missing or invalid
        raise ImageCheckError(f"the header does not describe the pixel data ({error})") from None
    found = len(dataset.PixelData)
    if found not in (expected, expected + 1):
        raise ImageCheckError(f"the pixel data holds {found} bytes where the header's size makes {expected}")


def check_pixel_values(dataset: pydicom.Dataset, bits_stored: int) -> None:
    """ImageCheckError for rescale and window values that cannot describe real pixels: a non-finite
    or zero slope, a non-finite intercept, a rescale beyond float range, a non-finite or
    non-positive window, and signed 8-bit grey pixels (no radiograph stores them: the flag is wrong)."""
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope not in (None, ""):
        slope = float(slope)
        if not math.isfinite(slope) or slope == 0:
            raise ImageCheckError(f"RescaleSlope {slope:g} cannot map stored values to real ones")
    if intercept not in (None, "") and not math.isfinite(float(intercept)):
        raise ImageCheckError(f"RescaleIntercept {float(intercept):g} is not a finite number")
    if slope not in (None, "") and intercept not in (None, ""):
        largest = abs(slope) * 2.0**bits_stored + abs(float(intercept))
        if largest > _LARGEST_RESCALED_VALUE:
            raise ImageCheckError(f"RescaleSlope {slope:g} and RescaleIntercept {float(intercept):g} map "
                                       f"stored values up to {largest:.3g}, beyond any real pixel value")
    for keyword in ("WindowCenter", "WindowWidth"):
        value = dataset.get(keyword)
        if value in (None, ""):
            continue
        numbers = _numbers(value)
        if not all(math.isfinite(number) for number in numbers):
            raise ImageCheckError(f"{keyword} {value} is not a finite number")
        if keyword == "WindowWidth" and min(numbers) <= 0:
            raise ImageCheckError(f"WindowWidth {value} must be positive")
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if int(dataset.get("PixelRepresentation", 0) or 0) == 1 and bits_stored <= 8 and samples == 1:
        raise ImageCheckError(f"PixelRepresentation 1 (signed) with {bits_stored} bits stored: no radiograph "
                                   "stores signed 8-bit pixels, so the header is taken to be wrong")


def check_not_blank(decoded: np.ndarray, grey: np.ndarray) -> None:
    """ImageCheckError when the picture is one grey level: from varied stored values, the header's
    rescale or window flattened them; from constant decoded values, the file holds no picture
    (or its stream decoded to nothing, as a corrupt JPEG does)."""
    if grey.size == 0 or grey.min() != grey.max():
        return
    if decoded.min() != decoded.max():
        raise ImageCheckError(f"the header's rescale and window map every stored value "
                                   f"({decoded.min()}..{decoded.max()}) to one grey level: a blank picture")
    raise ImageCheckError(f"every decoded pixel is {decoded.flat[0]}: a blank picture (an empty image, or "
                               "a stream that decodes to nothing)")
