"""Hostile image files made on the spot: compression bombs, contradictory headers, and a
deterministic fuzz campaign of mutants of small valid seed files.

Nothing here is committed as a file: every bomb is a few KB made by these functions. Run as a
script, it writes the campaign (seeds, mutants and a manifest), or reads a written one in its own
process and prints what happened to each mutant, with the process's peak memory before and after
(tests/test_fuzz_images.py reads in a subprocess so that the peak is the reader's alone):

    python tests/hostile_files.py write DIR [--seed 0]
    python tests/hostile_files.py read DIR [--limit-mib 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import struct
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless,
                         SecondaryCaptureImageStorage)

# Small valid files of every decoder path: pydicom's own test files and an RSNA-like film.
PYDICOM_SEEDS = {
    "ct_native_signed": "CT_small.dcm",  # 128 x 128, 16-bit signed, rescale
    "rgb_rle": "SC_rgb_rle.dcm",  # 100 x 100 RGB, RLE
    "mr_jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",  # 64 x 64, 16-bit signed, JPEG-LS
    "mr_jpeg2000": "MR_small_jp2klossless.dcm",  # 64 x 64, 16-bit signed, JPEG 2000
}
FILM_SIZE = 128


def film_pixels(size: int = FILM_SIZE) -> np.ndarray:
    """An 8-bit chest-film-like picture: dark lungs in a brighter body, some texture."""
    rows, columns = np.mgrid[0:size, 0:size] / size
    body = 170 - 90 * (np.exp(-((columns - 0.3) ** 2 + (rows - 0.5) ** 2) / 0.02)
                       + np.exp(-((columns - 0.7) ** 2 + (rows - 0.5) ** 2) / 0.02))
    texture = 12 * np.sin(40 * rows) * np.cos(33 * columns)
    return np.clip(body + texture, 0, 255).astype(np.uint8)


def rsna_like_film(path: Path, pixels: np.ndarray | None = None) -> Path:
    """An RSNA-layout DICOM: 8-bit MONOCHROME2, JPEG Baseline, as the Kaggle files are."""
    pixels = film_pixels() if pixels is None else pixels
    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[path.name])
    dataset.Modality, dataset.BodyPartExamined, dataset.ViewPosition, dataset.PatientAge = "CR", "CHEST", "PA", "51"
    dataset.set_pixel_data(pixels, "MONOCHROME2", 8)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.add(DataElement(0x7FE00010, "OB", encapsulate([encoded.tobytes()]), is_undefined_length=True))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR AS")  # the RSNA files' bare age, as they are
        dataset.save_as(path, enforce_file_format=True)
    return path


def seed_files(directory: Path) -> dict[str, Path]:
    """The seeds, written into `directory`: {name: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = {"film_jpeg": rsna_like_film(directory / "film_jpeg.dcm")}
    for name, test_file in PYDICOM_SEEDS.items():
        seeds[name] = Path(shutil.copy(get_testdata_file(test_file), directory / f"{name}.dcm"))
    return seeds


# ----------------------------------------------------------------------------- bombs


def _first_marker(data: bytes, marker: bytes) -> int:
    offset = data.find(marker)
    assert offset >= 0, f"no {marker!r} in the stream"
    return offset


def stream_size_bomb(seed: Path, path: Path, rows: int = 65535, columns: int = 65535) -> Path:
    """`seed` (JPEG, JPEG-LS or JPEG 2000) with its compressed frame's own header rewritten to
    `rows` x `columns`; the DICOM header keeps its true size. A decoder trusting the stream
    allocates rows x columns samples."""
    data = bytearray(seed.read_bytes())
    syntax = pydicom.dcmread(seed, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if syntax in pydicom.uid.JPEG2000TransferSyntaxes:
        siz = _first_marker(data, b"\xff\x4f\xff\x51") + 4  # SIZ: length, capabilities, then Xsiz, Ysiz
        x_offset, y_offset = struct.unpack(">II", data[siz + 12:siz + 20])
        data[siz + 4:siz + 12] = struct.pack(">II", columns + x_offset, rows + y_offset)
    else:
        sof = _first_marker(data, b"\xff\xf7" if syntax in pydicom.uid.JPEGLSTransferSyntaxes else b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", rows, columns)
    path.write_bytes(bytes(data))
    return path


def deflate_bomb(path: Path, inflated_mib: int) -> Path:
    """A Deflated Explicit VR Little Endian DICOM whose body inflates to about `inflated_mib` MiB
    (a private element of zeros before the image) while the file is a thousand times smaller."""
    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    dataset.set_pixel_data(film_pixels(16), "MONOCHROME2", 8)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    written = path.read_bytes()
    body_start = 132 + 12 + struct.unpack("<I", written[140:144])[0]  # preamble, DICM, the meta group
    body = zlib.decompress(written[body_start:], -zlib.MAX_WBITS)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, inflated_mib * 2**20))]
    zeros = bytes(2**20)
    parts += [compressor.compress(zeros) for _ in range(inflated_mib)]
    parts += [compressor.compress(body), compressor.flush()]
    path.write_bytes(written[:body_start] + b"".join(parts))
    return path


def png_bomb(path: Path, side: int = 16000) -> Path:
    """A PNG whose header declares `side` x `side` 16-bit grey pixels, and a few bytes of data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    row = b"\x00" + bytes(2 * side)
    data = zlib.compress(row * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def with_header(seed: Path, path: Path, **elements) -> Path:
    """`seed` with DICOM header elements set (`None` deletes one), the pixel data as it was."""
    dataset = pydicom.dcmread(seed)
    for keyword, value in elements.items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        elif keyword == "TransferSyntaxUID":
            dataset.file_meta.TransferSyntaxUID = value
        else:
            setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=False)
    return path


# ----------------------------------------------------------------------------- the fuzz campaign

# Header changes that leave the pixels, and everything that shapes them, alone.
HARMLESS = ({"PatientAge": "abc"}, {"ViewPosition": "XX"}, {"PatientName": "Fuzz^Test"},
            {"BodyPartExamined": None}, {"StudyDescription": "x" * 64})
# Header values that change what the pixels mean: each may give a named error or a picture.
HEADER_VALUES = {
    "Rows": (0, 1, "half", "double", 65535), "Columns": (0, 1, "half", "double", 65535),
    "BitsAllocated": (0, 1, 7, 12, 32, 64), "BitsStored": (0, 1, 7, 9, 17, 40), "HighBit": (0, 31),
    "SamplesPerPixel": (0, 2, 3, 4), "PixelRepresentation": (0, 1), "PlanarConfiguration": (1,),
    "PhotometricInterpretation": ("MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL_422", "XYZ"),
    "RescaleSlope": ("0", "nan", "inf", "-inf", "1e300", "-1", "1e-300"),
    "RescaleIntercept": ("nan", "inf", "1e300"),
    "WindowCenter": ("nan", "inf", "1e300", "-1e6"), "WindowWidth": ("0", "-5", "nan", "inf", "1e-9", "1e300"),
    "NumberOfFrames": (0, 2, 1000000), "VOILUTFunction": ("SIGMOID", "BOGUS"),
    "TransferSyntaxUID": (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                          DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless,
                          RLELossless),
}
DELETED = ("Rows", "PixelData", "BitsAllocated", "PhotometricInterpretation", "SamplesPerPixel")
FLIPS_PER_SEED = 20
TRUNCATIONS_PER_SEED = 8


@dataclass(frozen=True)
class Mutant:
    name: str
    path: Path
    seed: str
    keeps_pixels: bool  # the mutation leaves the pixels alone: reading must give the seed's picture


def _header_value(dataset: Dataset, keyword: str, value):
    if value == "half":
        return max(1, int(getattr(dataset, keyword)) // 2)
    if value == "double":
        return int(getattr(dataset, keyword)) * 2
    return value


def _write_header_mutant(seed: Path, path: Path, keyword: str, value) -> bool:
    """`seed` with one header element set (None: deleted); False where pydicom refuses to write it."""
    dataset = pydicom.dcmread(seed)
    try:
        if value is None:
            delattr(dataset, keyword)
        elif keyword == "TransferSyntaxUID":
            dataset.file_meta.TransferSyntaxUID = value
        else:
            dataset.add_new(keyword, pydicom.datadict.dictionary_VR(keyword), _header_value(dataset, keyword, value))
        dataset.save_as(path, enforce_file_format=False)
        return True
    except Exception:  # a value pydicom cannot encode in that VR or syntax: not a file anyone can make
        path.unlink(missing_ok=True)
        return False


def make_mutants(seeds: dict[str, Path], directory: Path, seed: int = 0) -> list[Mutant]:
    """Every mutant of the campaign, written into `directory`; the same files for the same `seed`."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    mutants = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values it is asked to write
        for seed_name, seed_path in seeds.items():
            for index, elements in enumerate(HARMLESS):
                path = directory / f"{seed_name}-harmless{index}.dcm"
                (keyword, value), = elements.items()
                if _write_header_mutant(seed_path, path, keyword, value):
                    mutants.append(Mutant(path.stem, path, seed_name, True))
            changes = [(keyword, value) for keyword, values in HEADER_VALUES.items() for value in values]
            changes += [(keyword, None) for keyword in DELETED]
            for keyword, value in changes:
                path = directory / f"{seed_name}-{keyword}-{str(value).replace('.', '_')[:24]}.dcm"
                if _write_header_mutant(seed_path, path, keyword, value):
                    mutants.append(Mutant(path.stem, path, seed_name, False))
            data = seed_path.read_bytes()
            for index in range(FLIPS_PER_SEED):
                flipped = bytearray(data)
                low = 132 if index % 4 == 0 else len(data) // 3  # a quarter anywhere, the rest in the pixels
                for position in rng.integers(low, len(data), size=int(rng.choice([1, 4, 32]))):
                    flipped[position] ^= int(rng.integers(1, 256))
                path = directory / f"{seed_name}-flip{index}.dcm"
                path.write_bytes(bytes(flipped))
                mutants.append(Mutant(path.stem, path, seed_name, False))
            for index in range(TRUNCATIONS_PER_SEED):
                path = directory / f"{seed_name}-cut{index}.dcm"
                path.write_bytes(data[:int(rng.integers(140, len(data)))])
                mutants.append(Mutant(path.stem, path, seed_name, False))
        for seed_name in ("film_jpeg", "mr_jpeg_ls", "mr_jpeg2000"):
            path = stream_size_bomb(seeds[seed_name], directory / f"{seed_name}-stream-bomb.dcm")
            mutants.append(Mutant(path.stem, path, seed_name, False))
    mutants.append(Mutant("deflate-bomb", deflate_bomb(directory / "deflate-bomb.dcm", 256), "", False))
    mutants.append(Mutant("png-bomb", png_bomb(directory / "png-bomb.png", 16000), "", False))
    return mutants


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def read_all(seeds: dict[str, Path], mutants: list[Mutant], limit_mib: float) -> dict:
    """Read the seeds, then every mutant: {"peak_before_mib", "peak_after_mib", "seconds", "outcomes"};
    an outcome is {"name", "kind": "read" | "error" | "crash", ...}."""
    from retinanet.data.dicom import DicomReadError, read_image

    pictures = {name: read_image(path, memory_limit_mib=limit_mib) for name, path in seeds.items()}
    before, started, outcomes = _peak_mib(), time.perf_counter(), []
    for mutant in mutants:
        outcome = {"name": mutant.name}
        try:
            picture = read_image(mutant.path, memory_limit_mib=limit_mib)
            outcome.update(kind="read", shape=list(picture.shape), dtype=str(picture.dtype),
                           blank=bool(picture.size == 0 or picture.min() == picture.max()))
            if mutant.keeps_pixels:
                outcome["equals_seed"] = bool(np.array_equal(picture, pictures[mutant.seed]))
        except DicomReadError as error:
            outcome.update(kind="error", message=str(error), names_file=str(mutant.path) in str(error))
        except BaseException as error:  # anything else is a crash the campaign reports
            outcome.update(kind="crash", message=f"{type(error).__name__}: {error}")
        outcomes.append(outcome)
    return {"peak_before_mib": before, "peak_after_mib": _peak_mib(), "seconds": time.perf_counter() - started,
            "outcomes": outcomes}


MANIFEST = "manifest.json"


def write_campaign(directory: Path, seed: int = 0) -> int:
    """The seeds and their mutants in `directory`, and a manifest of them; returns the number of mutants."""
    seeds = seed_files(directory / "seeds")
    mutants = make_mutants(seeds, directory / "mutants", seed)
    manifest = {"seeds": {name: str(path) for name, path in seeds.items()},
                "mutants": [{**vars(mutant), "path": str(mutant.path)} for mutant in mutants]}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return len(mutants)


def read_campaign(directory: Path, limit_mib: float) -> dict:
    """`read_all` over the campaign `write_campaign` left in `directory`."""
    manifest = json.loads((directory / MANIFEST).read_text())
    seeds = {name: Path(path) for name, path in manifest["seeds"].items()}
    mutants = [Mutant(**{**entry, "path": Path(entry["path"])}) for entry in manifest["mutants"]]
    return {**read_all(seeds, mutants, limit_mib), "mutants": len(mutants)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("write", "read"), help="write the campaign, or read a written one")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--limit-mib", type=float, default=64, help="the memory budget of each read (read)")
    parser.add_argument("--seed", type=int, default=0, help="the mutations' random seed (write)")
    args = parser.parse_args(argv)
    if args.action == "write":
        print(json.dumps({"mutants": write_campaign(args.directory, args.seed)}))
    else:
        json.dump(read_campaign(args.directory, args.limit_mib), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
