"""retinanet.data.stream_headers against independent readers of the same headers: pydicom's JPEG
parameter parser, Pillow's JPEG 2000 and picture headers, pylibjpeg-rle's segment decoder."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import _get_jpg_parameters
from rle.utils import decode_segment

from retinanet.data.stream_headers import (StreamHeaderError, j2k_header, jpeg_header, looks_like, picture_header,
                                           rle_decoded_lengths, rle_segments)


def first_frame(name: str) -> bytes:
    dataset = pydicom.dcmread(get_testdata_file(name))
    return next(generate_frames(dataset.PixelData, number_of_frames=int(dataset.get("NumberOfFrames", 1) or 1)))


JPEG_FILES = ("SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
              "SC_rgb_small_odd_jpeg.dcm", "MR_small_jpeg_ls_lossless.dcm")


@pytest.mark.parametrize("name", JPEG_FILES)
def test_jpeg_and_jpeg_ls_frame_headers_match_pydicoms_parser(name):
    frame = first_frame(name)
    expected = _get_jpg_parameters(frame)
    header = jpeg_header(frame)
    assert (header.rows, header.columns, header.components, header.precision) == (
        expected["height"], expected["width"], expected["components"], expected["precision"])
    assert (header.kind == "JPEG-LS") == ("interleave_mode" in expected)  # pydicom reads ILV of JPEG-LS only
    assert header.scan_bytes > 0


def test_jpeg_kinds_by_start_of_frame_marker():
    assert jpeg_header(first_frame("JPEG-LL.dcm")).kind == "JPEG lossless"  # SOF3
    assert jpeg_header(first_frame("JPEG-lossy.dcm")).kind == "JPEG"  # SOF1, 12 bit
    assert jpeg_header(first_frame("MR_small_jpeg_ls_lossless.dcm")).kind == "JPEG-LS"  # SOF55


@pytest.mark.parametrize("name", ("MR_small_jp2klossless.dcm", "RG1_J2KR.dcm", "JPEG2000.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm"))
def test_jpeg_2000_size_matches_pillow_and_sign_matches_pydicom(name):
    frame = first_frame(name)
    header = j2k_header(frame)
    with Image.open(io.BytesIO(frame)) as picture:
        assert (header.columns, header.rows) == picture.size
    parameters = pydicom.pixels.utils.get_j2k_parameters(frame)
    assert (header.precision, header.signed) == (parameters["precision"], parameters["is_signed"])


def test_jpeg_2000_with_an_image_offset():
    # Xsiz, Ysiz count from the canvas origin: the image is Xsiz - XOsiz wide (15444-1 B.2).
    frame = bytearray(first_frame("MR_small_jp2klossless.dcm"))
    siz = frame.find(b"\xff\x51") + 2
    frame[siz + 4:siz + 20] = struct.pack(">IIII", 100, 90, 36, 26)  # Xsiz, Ysiz, XOsiz, YOsiz
    header = j2k_header(bytes(frame))
    assert (header.rows, header.columns) == (64, 64)


def test_rle_segments_and_their_decoded_lengths_match_the_decoder():
    frame = first_frame("SC_rgb_rle.dcm")  # 100 x 100 RGB, 8 bits: three segments
    offsets = rle_segments(frame)
    assert len(offsets) == 3 and offsets[0] == 64
    ends = [*offsets[1:], len(frame)]
    decoded = [len(decode_segment(frame[start:end])) for start, end in zip(offsets, ends)]
    assert rle_decoded_lengths(frame, offsets) == decoded == [100 * 100] * 3


def test_rle_lengths_on_hand_made_packets():
    # A literal run of 3 (header 2), a repeat of 5 (header 257 - 5 = 252), a no-op (128), a literal of 1.
    segment = bytes([2, 7, 8, 9, 252, 4, 128, 0, 6])
    frame = struct.pack("<16I", 1, 64, *[0] * 14) + segment
    assert rle_decoded_lengths(frame, [64]) == [3 + 5 + 1]


@pytest.mark.parametrize("header, reason", [
    (struct.pack("<16I", 0, *[0] * 15), "0 segments"),
    (struct.pack("<16I", 16, *[64] * 15), "16 segments"),
    (struct.pack("<16I", 2, 64, 40, *[0] * 13), "in order"),
    (struct.pack("<16I", 1, 900, *[0] * 14), "in order"),
])
def test_broken_rle_headers(header, reason):
    with pytest.raises(StreamHeaderError, match=reason):
        rle_segments(header + bytes(100))


def test_not_the_kind_the_syntax_names():
    j2k = first_frame("MR_small_jp2klossless.dcm")
    jpeg = first_frame("SC_rgb_jpeg_dcmtk.dcm")
    assert looks_like(j2k) == "JPEG 2000" and looks_like(jpeg) == "JPEG" and looks_like(b"abc") == "unknown data"
    with pytest.raises(StreamHeaderError, match="looks like JPEG 2000"):
        jpeg_header(j2k)
    with pytest.raises(StreamHeaderError, match="looks like JPEG"):
        j2k_header(jpeg)
    with pytest.raises(StreamHeaderError, match="no JPEG frame header"):
        jpeg_header(b"\xff\xd8\xff\xd9")


@pytest.mark.parametrize("suffix, image", [
    (".png", np.zeros((30, 40), np.uint16)), (".png", np.zeros((30, 40, 3), np.uint8)),
    (".jpg", np.zeros((30, 40), np.uint8)), (".bmp", np.zeros((30, 40, 3), np.uint8)),
    (".tif", np.zeros((30, 40), np.uint16)),
])
def test_picture_headers_give_what_opencv_decodes(tmp_path, suffix, image):
    path = tmp_path / f"picture{suffix}"
    assert cv2.imwrite(str(path), image)
    header = picture_header(str(path))
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert (header.rows, header.columns) == decoded.shape[:2]
    assert header.components == (decoded.shape[2] if decoded.ndim == 3 else 1)
    assert header.precision == 8 * decoded.dtype.itemsize


def test_picture_header_of_a_broken_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot a chunk")
    with pytest.raises(StreamHeaderError, match="not a readable image file"):
        picture_header(str(path))
