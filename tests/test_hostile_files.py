"""Hostile image files: bombs are refused before decoding, contradictory headers and values are
named errors, no file reads as a blank picture, and a stream of reads stops at the first error."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pydicom
import pytest
from hostile_files import (deflate_bomb, film_pixels, png_bomb, rsna_like_film, seed_files, stream_size_bomb,
                           with_header)
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from retinanet.data.dicom import DicomReadError, read_image
from retinanet.runtime.ordered_map import ordered_map


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict:
    return seed_files(tmp_path_factory.mktemp("seeds"))


def refused(path, *fragments: str, limit_mib: float = 1024) -> str:
    """The reason read_image gives for `path`, checked to name the file and hold every fragment."""
    with pytest.raises(DicomReadError) as raised:
        read_image(path, memory_limit_mib=limit_mib)
    message = str(raised.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- memory bombs


@pytest.mark.parametrize("seed_name, kind", [("film_jpeg", "JPEG"), ("mr_jpeg_ls", "JPEG-LS"),
                                             ("mr_jpeg2000", "JPEG 2000")])
def test_a_frame_declaring_a_huge_size_is_refused_before_decoding(seeds, seed_name, kind, tmp_path):
    # The DICOM header keeps its small size; only the compressed frame's own header says 65535 x 65535,
    # which is what the decoder would allocate (a 7 KB file asked for gigabytes).
    bomb = stream_size_bomb(seeds[seed_name], tmp_path / "bomb.dcm")
    started = time.perf_counter()
    refused(bomb, f"{kind} frame's own header disagrees with the DICOM header", "65535 x 65535 pixels")
    assert time.perf_counter() - started < 1.0


def test_a_deflate_bomb_is_refused_while_inflating(tmp_path):
    bomb = deflate_bomb(tmp_path / "deflate.dcm", inflated_mib=200)
    assert bomb.stat().st_size < 400_000  # a thousandth of what it inflates to
    refused(bomb, "the deflated data set inflates to more than the limit of 64 MiB (data.decode_memory_mib",
            limit_mib=64)


def test_a_deflated_file_within_the_budget_reads(tmp_path):
    path = deflate_bomb(tmp_path / "deflate.dcm", inflated_mib=2)
    np.testing.assert_array_equal(read_image(path, memory_limit_mib=64), film_pixels(16))


def test_a_png_declaring_a_huge_size_is_refused_from_its_header(tmp_path):
    refused(png_bomb(tmp_path / "big.png", side=8000), "8000 x 8000 pixels", "data.decode_memory_mib")
    # Past Pillow's own bomb limit the header is refused there, still naming our key.
    refused(png_bomb(tmp_path / "huge.png", side=16000), "declares 256,000,000 pixels", "data.decode_memory_mib")


def test_a_consistent_but_too_large_image_is_refused_and_the_key_raises_the_limit(tmp_path):
    pixels = np.tile(film_pixels(), (16, 16))  # 2048 x 2048: 2048**2 * 31 bytes is 124 MiB, and the file's bytes
    path = rsna_like_film(tmp_path / "large.dcm", pixels)
    refused(path, "2048 x 2048 pixels", "needs about 125 MiB to decode, more than the limit of 100 MiB",
            limit_mib=100)
    assert read_image(path, memory_limit_mib=200).shape == (2048, 2048)


def test_a_file_larger_than_the_budget_is_not_read(tmp_path):
    path = rsna_like_film(tmp_path / "film.dcm")
    with open(path, "ab") as file:
        file.write(bytes(20 * 2**20))
    refused(path, "the file of 20 MiB needs as much memory to read, more than the limit of 16 MiB", limit_mib=16)


# ----------------------------------------------------------------------------- values that cannot be right


@pytest.mark.parametrize("elements, fragment", [
    ({"RescaleSlope": "0"}, "RescaleSlope 0"),
    ({"RescaleSlope": "nan"}, "RescaleSlope nan"),
    ({"RescaleSlope": "inf"}, "RescaleSlope inf"),
    ({"RescaleSlope": "1e300"}, "beyond any real pixel value"),
    ({"RescaleIntercept": "nan"}, "RescaleIntercept nan"),
    ({"WindowCenter": "inf", "WindowWidth": "400"}, "WindowCenter inf"),
    ({"WindowCenter": "40", "WindowWidth": "nan"}, "WindowWidth nan"),
    ({"WindowCenter": "40", "WindowWidth": "0"}, "WindowWidth 0 must be positive"),
    ({"WindowCenter": "-1e6", "WindowWidth": "10"}, "map every stored value"),
])
def test_values_that_would_make_a_blank_film_are_named_errors(seeds, tmp_path, elements, fragment):
    # CT_small has a rescale (slope 1, intercept -1024): each of these made a constant picture before.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns as it writes the invalid value
        path = with_header(seeds["ct_native_signed"], tmp_path / "m.dcm", **elements)
    refused(path, fragment)


def test_jpeg_2000_data_labelled_jpeg_baseline(seeds, tmp_path):
    path = with_header(seeds["mr_jpeg2000"], tmp_path / "m.dcm", TransferSyntaxUID=JPEGBaseline8Bit)
    refused(path, "JPEG Baseline", "looks like JPEG 2000")


def test_signed_flag_on_8_bit_jpeg(seeds, tmp_path):
    path = with_header(seeds["film_jpeg"], tmp_path / "m.dcm", PixelRepresentation=1)
    refused(path, "PixelRepresentation 1 (signed) on lossy 8-bit JPEG")


def test_signed_flag_contradicting_the_jpeg_2000_stream(seeds, tmp_path):
    path = with_header(seeds["mr_jpeg2000"], tmp_path / "m.dcm", PixelRepresentation=0)
    refused(path, "signed samples where PixelRepresentation is 0")


@pytest.mark.parametrize("elements, fragment", [
    ({"Rows": 32}, "64 x 64 pixels where Rows x Columns is 32 x 64"),
    ({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
     "1 components where SamplesPerPixel is 3"),
    ({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}, "16-bit samples where BitsAllocated is 8"),
])
def test_stream_header_disagreeing_with_the_dicom_header(seeds, tmp_path, elements, fragment):
    refused(with_header(seeds["mr_jpeg_ls"], tmp_path / "m.dcm", **elements), fragment)


def test_rle_frame_disagreeing_with_the_dicom_header(seeds, tmp_path):
    refused(with_header(seeds["rgb_rle"], tmp_path / "rows.dcm", Rows=50),
            "an RLE segment decodes to 10000 bytes where Rows x Columns is 5000")
    refused(with_header(seeds["rgb_rle"], tmp_path / "bits.dcm", BitsAllocated=16, BitsStored=16, HighBit=15),
            "3 RLE segments where SamplesPerPixel 3 and BitsAllocated 16 make 6")


def test_native_pixel_data_of_another_size(seeds, tmp_path):
    refused(with_header(seeds["ct_native_signed"], tmp_path / "m.dcm", Rows=64),
            "the pixel data holds 32768 bytes where the header's size makes 16384")


def test_a_jpeg_stream_without_its_scan_is_not_a_picture(seeds, tmp_path):
    dataset = pydicom.dcmread(seeds["film_jpeg"])
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    scan = frame.index(b"\xff\xda")
    scan_end = scan + 2 + int.from_bytes(frame[scan + 2:scan + 4], "big")
    dataset.PixelData = encapsulate([frame[:scan_end] + b"\xff\xd9"])  # the decoder invents a picture from nothing
    dataset.save_as(tmp_path / "empty_scan.dcm")
    refused(tmp_path / "empty_scan.dcm", "fewer than any complete 128 x 128 image needs")


def test_a_constant_decode_of_a_compressed_film_is_refused(tmp_path):
    path = rsna_like_film(tmp_path / "black.dcm", np.zeros((128, 128), np.uint8))
    refused(path, "every decoded pixel is 0", "blank")


def test_the_seeds_themselves_read(seeds):
    for path in seeds.values():
        picture = read_image(path)
        assert picture.dtype == np.uint8 and picture.min() < picture.max()


def test_a_jpeg_2000_film_reads_through_the_checks(tmp_path):
    # The checks read the frame header of a real-size codestream and let it through unchanged.
    dataset = pydicom.Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = pydicom.uid.SecondaryCaptureImageStorage, "1.2.3.4"
    pixels = (film_pixels(256).astype(np.uint16) * 16)
    dataset.set_pixel_data(pixels, "MONOCHROME2", 12)
    dataset.compress(JPEG2000Lossless)
    dataset.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    assert read_image(tmp_path / "j2k.dcm").shape == (256, 256)


# ----------------------------------------------------------------------------- reading stops at the first error


def test_ordered_map_keeps_order_and_stops_early():
    started = []

    def square(item):
        started.append(item)
        if item == 5:
            raise ValueError("five")
        return item * item

    assert list(ordered_map(square, range(5), num_workers=2, ahead=3)) == [0, 1, 4, 9, 16]
    started.clear()
    with pytest.raises(ValueError, match="five"), contextlib.closing(
            ordered_map(square, range(10_000), num_workers=2, ahead=4)) as results:
        for _ in results:
            pass
    # Items 0..5, the 4 submitted after the last one yielded, at most: the rest were never started.
    assert len(started) <= 6 + 4


def test_build_cache_stops_reading_at_the_first_unreadable_image(seeds, tmp_path, monkeypatch):
    from retinanet.config import PreprocessingConfig
    from retinanet.data import cache
    from retinanet.data.rsna import Record

    bad = stream_size_bomb(seeds["film_jpeg"], tmp_path / "bomb.dcm")
    records = [Record(f"p{index}", str(bad if index == 3 else seeds["film_jpeg"]), np.zeros((0, 4)), 0)
               for index in range(200)]
    reads = []
    monkeypatch.setattr(cache, "read_image", lambda path, **limit: reads.append(path) or read_image(path, **limit))
    with pytest.raises(DicomReadError, match="65535 x 65535"):
        cache.build_cache(records, PreprocessingConfig(image_size=(64, 64)), tmp_path / "cache", num_workers=2,
                          progress=False)
    assert len(reads) <= 4 + 2 * 2  # up to the bad one, and what was in flight
