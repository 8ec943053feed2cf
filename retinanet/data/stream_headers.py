"""What a compressed frame says about itself, read from its own header before any decoder runs.

A decoder allocates its output from the size in the stream's header, not from the DICOM header:
a 7 KB JPEG-LS frame whose SOF says 65535 x 65535 makes the decoder ask for gigabytes. These
parsers read only the few bytes of that header (JPEG and JPEG-LS SOF, JPEG 2000 SIZ, the RLE
header, a picture file's header through Pillow) so that the reader can compare it with the DICOM
header and with the memory budget first. Each raises `StreamHeaderError` (a ValueError) with the
reason when the bytes are not a header of the kind expected.
"""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

# Start-of-frame markers of ISO 10918 (JPEG): C0..CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_LOSSLESS_FRAMES = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
JPEG_LS_START_OF_FRAME = 0xF7  # SOF55, ISO 14495
# Markers without a length field: TEM, RST0..RST7, SOI, EOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xDA)})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_START = b"\xff\x4f\xff\x51"  # SOC, then SIZ
RLE_HEADER_BYTES = 64
# Pillow's modes -> (samples per pixel, bytes per sample).
_PICTURE_MODES = {"1": (1, 1), "L": (1, 1), "P": (1, 1), "LA": (2, 1), "PA": (2, 1), "RGB": (3, 1), "RGBA": (4, 1),
                  "CMYK": (4, 1), "YCbCr": (3, 1), "I": (1, 4), "F": (1, 4), "I;16": (1, 2), "I;16B": (1, 2),
                  "I;16L": (1, 2), "I;16N": (1, 2)}


class StreamHeaderError(ValueError):
    """The bytes are not a header of the kind their transfer syntax or suffix promises."""


class OversizedHeaderError(StreamHeaderError):
    """A picture header declaring more pixels than Pillow will even describe (its bomb limit)."""


@dataclass(frozen=True)
class StreamHeader:
    """A frame's own description of itself."""

    kind: str  # "JPEG", "JPEG lossless", "JPEG-LS", "JPEG 2000", "RLE" or a picture format
    rows: int | None = None  # None (here and below) where the format does not say
    columns: int | None = None
    components: int | None = None  # samples per pixel
    precision: int | None = None  # bits per sample
    signed: bool | None = None
    segments: int | None = None  # RLE: one per byte of each sample
    segment_lengths: tuple[int, ...] = ()  # RLE: the bytes each segment decodes to
    scan_bytes: int | None = None  # JPEG: the bytes from the first start of scan to the end


def looks_like(data: bytes) -> str:
    """What the first bytes of a frame are, for messages: "JPEG", "JPEG 2000", or "unknown data"."""
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data.startswith(_J2K_START) or data.startswith(_JP2_SIGNATURE):
        return "JPEG 2000"
    return "unknown data"


def jpeg_header(data: bytes) -> StreamHeader:
    """The frame header (SOF) of a JPEG (ISO 10918) or JPEG-LS (ISO 14495) stream."""
    if not data.startswith(b"\xff\xd8"):
        raise StreamHeaderError(f"no JPEG start-of-image marker (the data looks like {looks_like(data)})")
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise StreamHeaderError(f"no JPEG marker at byte {offset} before the frame header")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE_MARKERS:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        if marker in JPEG_START_OF_FRAME or marker == JPEG_LS_START_OF_FRAME:
            if length < 8 or offset + 10 > len(data):
                raise StreamHeaderError("the JPEG frame header is cut short")
            precision, rows, columns, components = struct.unpack(">BHHB", data[offset + 4:offset + 10])
            if marker == JPEG_LS_START_OF_FRAME:
                kind = "JPEG-LS"
            else:
                kind = "JPEG lossless" if marker in JPEG_LOSSLESS_FRAMES else "JPEG"
            scan = data.find(b"\xff\xda", offset)
            return StreamHeader(kind, rows, columns, components, precision,
                                scan_bytes=len(data) - scan if scan >= 0 else 0)
        if marker in (0xDA, 0xD9):  # start of scan or end of image before any frame header
            break
        if length < 2:
            raise StreamHeaderError(f"a JPEG segment at byte {offset} declares length {length}")
        offset += 2 + length
    raise StreamHeaderError("no JPEG frame header (SOF) before the image data")


def j2k_header(data: bytes) -> StreamHeader:
    """The image and tile size (SIZ) of a JPEG 2000 codestream, bare or inside a JP2 file."""
    start = 0
    if data.startswith(_JP2_SIGNATURE):
        start = _jp2_codestream_offset(data)
    if data[start:start + 4] != _J2K_START:
        raise StreamHeaderError(f"no JPEG 2000 SOC and SIZ markers (the data looks like {looks_like(data)})")
    siz = data[start + 4:]
    if len(siz) < 38 + 3:
        raise StreamHeaderError("the JPEG 2000 SIZ segment is cut short")
    (_length, _capabilities, width, height, x_offset, y_offset, _tile_width, _tile_height, _tile_x, _tile_y,
     components) = struct.unpack(">HHIIIIIIIIH", siz[:38])
    if width <= x_offset or height <= y_offset:
        raise StreamHeaderError(f"the JPEG 2000 SIZ declares an empty image ({width} x {height} from offset "
                                f"{x_offset}, {y_offset})")
    if components < 1 or len(siz) < 38 + 3 * components:
        raise StreamHeaderError(f"the JPEG 2000 SIZ declares {components} components and holds fewer")
    depth = siz[38]  # the first component's Ssiz: bit 7 the sign, bits 0-6 the precision - 1
    return StreamHeader("JPEG 2000", height - y_offset, width - x_offset, components, (depth & 0x7F) + 1,
                        bool(depth & 0x80))


def _jp2_codestream_offset(data: bytes) -> int:
    """Where the contiguous codestream box ('jp2c') of a JP2 file starts its content."""
    offset = 0
    while offset + 8 <= len(data):
        length, box = struct.unpack(">I4s", data[offset:offset + 8])
        header = 8
        if length == 1:  # a 64-bit length follows
            if offset + 16 > len(data):
                break
            (length,) = struct.unpack(">Q", data[offset + 8:offset + 16])
            header = 16
        if box == b"jp2c":
            return offset + header
        if length < header:  # 0 (to the end) before the codestream, or a broken length
            break
        offset += length
    raise StreamHeaderError("a JP2 file without a codestream box")


def rle_segments(data: bytes) -> list[int]:
    """The segment offsets of a DICOM RLE frame's 64-byte header (PS3.5 G.3), checked to lie in the frame."""
    if len(data) < RLE_HEADER_BYTES:
        raise StreamHeaderError(f"an RLE frame of {len(data)} bytes has no 64-byte header")
    count, *offsets = struct.unpack("<16I", data[:RLE_HEADER_BYTES])
    if not 1 <= count <= 15:
        raise StreamHeaderError(f"the RLE header declares {count} segments (1 to 15 are possible)")
    offsets = offsets[:count]
    if offsets[0] != RLE_HEADER_BYTES or any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(data):
        raise StreamHeaderError(f"the RLE segment offsets {offsets} do not lie in order inside the "
                                f"{len(data)}-byte frame")
    return offsets


def rle_decoded_lengths(data: bytes, offsets: list[int]) -> list[int]:
    """The number of bytes each RLE segment decodes to, counted from its PackBits packets without
    decoding: a header byte n < 128 copies the next n + 1 bytes, n > 128 repeats the next byte
    257 - n times, 128 does nothing (PS3.5 G.3.1)."""
    ends = [*offsets[1:], len(data)]
    lengths = []
    for start, end in zip(offsets, ends):
        position, length = start, 0
        while position < end:
            header = data[position]
            if header < 128:
                length += header + 1
                position += header + 2
            elif header > 128:
                length += 257 - header
                position += 2
            else:
                position += 1
        lengths.append(length)
    return lengths


def picture_header(path: str) -> StreamHeader:
    """Size and sample layout of a PNG, JPEG, BMP or TIFF file, from its header alone (Pillow opens
    lazily and decodes nothing here)."""
    try:
        with warnings.catch_warnings():
            # Our own budget judges the size: Pillow's bomb warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as picture:
                columns, rows = picture.size
                mode, kind = picture.mode, picture.format or "picture"
    except Image.DecompressionBombError as error:
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(declared.group(1)):,} pixels" if declared else "an absurd size"
        raise OversizedHeaderError(f"the picture's header declares {size}, beyond even Pillow's bomb limit of "
                                   f"{2 * Image.MAX_IMAGE_PIXELS:,}") from None
    except (OSError, SyntaxError, ValueError, struct.error) as error:  # Pillow's errors for a broken header
        raise StreamHeaderError(f"not a readable image file ({error})") from None
    components, sample_bytes = _PICTURE_MODES.get(mode, (4, 4))
    return StreamHeader(kind, rows, columns, components, 8 * sample_bytes)
