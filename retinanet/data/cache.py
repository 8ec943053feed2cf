"""On-disk cache of preprocessed (CLAHE'd, letterboxed) images.

Decoding a 1024 px JPEG DICOM and CLAHE cost far more than a training step's input work, so
each image is processed once and stored as raw uint8 pixels at the network input size
(a 512 px image is 256 KiB; reading it back costs nothing next to decoding a PNG, which
kept the cached pipeline below 100 images/s on two cores). The cache lives
in `<cache_dir>/<settings key>/`, where the key hashes the preprocessing settings and the
versions of the reader and preprocessing code: changing them starts a new cache. `index.json`
records each image's source file (size and mtime), so an image whose DICOM changed is rebuilt
and the rest are reused; an index that cannot be read is reported and rebuilt. Files are
replaced atomically (retinanet/runtime/safe_writes.py): a full disk leaves the earlier ones intact.

A run can be killed at any moment: each image's entry is appended to `index.journal` (one JSON
line) once its pixels are in place, and the journal is folded into `index.json` at the end of
the run. The next run reads both, so it caches only the images that no entry records; a line cut
short by the kill is reported and its image cached again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retinanet.config import PreprocessingConfig
from retinanet.data import dicom, preprocess
from retinanet.data.decode_checks import DEFAULT_LIMIT_MIB
from retinanet.data.dicom import DicomReadError, read_image
from retinanet.data.patient_ids import check_patient_id
from retinanet.data.preprocess import preprocess_image
from retinanet.data.rsna import Record, SkipReport
from retinanet.runtime.ordered_map import ordered_map
from retinanet.runtime.safe_writes import append_line, make_directory, write_bytes_atomically, write_text_atomically

CACHE_VERSION = 2


@dataclass(frozen=True)
class CachedImage:
    path: str  # raw uint8 pixels, [height, width] of the network input
    scale: float  # original -> input pixels
    original_size: tuple[int, int]  # (height, width)


def settings_key(config: PreprocessingConfig) -> str:
    """The cache directory's name: a hash of everything that decides the cached pixels, the
    settings and the versions of the code that reads and preprocesses the images."""
    settings = {"version": CACHE_VERSION, "reader": dicom.READER_VERSION,
                "preprocessing": preprocess.PREPROCESSING_VERSION, "image_size": list(config.image_size),
                "clahe": config.clahe, "clip_limit": config.clahe_clip_limit, "tile_grid": config.clahe_tile_grid}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _is_entry(entry) -> bool:
    """An index entry as `build_cache` writes it: source [path, size, mtime], scale, original size."""
    return (isinstance(entry, dict) and isinstance(entry.get("source"), list) and len(entry["source"]) == 3
            and isinstance(entry.get("scale"), (int, float)) and isinstance(entry.get("original_size"), list)
            and len(entry["original_size"]) == 2)


def journal_path(index_path: Path) -> Path:
    return index_path.with_suffix(".journal")


def _read_journal(path: Path) -> dict:
    """{patient_id: entry} of the journal's lines, later lines winning; lines that are not a
    [patient_id, entry] pair (the last one cut short by a kill) are reported and left out."""
    if not path.is_file():
        return {}
    entries, broken = {}, 0
    for line in path.read_bytes().splitlines():
        try:
            patient_id, entry = json.loads(line)
            entries[str(patient_id)] = entry
        except (ValueError, TypeError, UnicodeDecodeError):
            broken += 1
    if broken:
        print(f"warning: {broken} line(s) of the cache journal {path} are incomplete (a run was interrupted while "
              "writing them); their images are cached again", file=sys.stderr)
    return entries


def read_index(index_path: Path) -> dict:
    """The cache's index: `index_path` and the journal of an interrupted run beside it. An unreadable
    index, or entries of the wrong form, are reported on stderr and left out, so that their
    images are read and cached again."""
    journal = _read_journal(journal_path(index_path))
    if not index_path.is_file():
        return _well_formed(journal, journal_path(index_path))
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        print(f"warning: the cache index {index_path} is not valid JSON ({error}); its images are cached again",
              file=sys.stderr)
        return _well_formed(journal, journal_path(index_path))
    if not isinstance(index, dict):
        print(f"warning: the cache index {index_path} is not a JSON object; its images are cached again",
              file=sys.stderr)
        return _well_formed(journal, journal_path(index_path))
    return _well_formed({**index, **journal}, index_path)


def _well_formed(index: dict, index_path: Path) -> dict:
    malformed = [patient_id for patient_id, entry in index.items() if not _is_entry(entry)]
    if malformed:
        print(f"warning: {len(malformed)} of {len(index)} entries of the cache index {index_path} are malformed "
              f"(e.g. {malformed[0]!r}); their images are cached again", file=sys.stderr)
    left_out = set(malformed)
    return {patient_id: entry for patient_id, entry in index.items() if patient_id not in left_out}


def _source_signature(path: str) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def load_preprocessed(path: str, config: PreprocessingConfig, memory_limit_mib: float = DEFAULT_LIMIT_MIB):
    """Read (within `memory_limit_mib`, see `read_image`) and preprocess one image file ->
    (uint8 [H, W], scale, (height, width))."""
    image = read_image(path, memory_limit_mib=memory_limit_mib)
    processed, scale = preprocess_image(image, config)
    return processed, scale, image.shape[:2]


def build_cache(records: list[Record], config: PreprocessingConfig, cache_dir: str | Path, *,
                policy: str = "error", num_workers: int = 2, progress: bool = True,
                memory_limit_mib: float = DEFAULT_LIMIT_MIB) -> tuple[dict[str, CachedImage], SkipReport]:
    """Make sure every record's image is cached; return {patient_id: CachedImage} and the skips.

    Images are read `num_workers` at a time, each within `memory_limit_mib` (`read_image`). An
    unreadable image raises DicomReadError under policy "error" at once, reading nothing more (the
    images cached before it stay in the index); under "skip" it is left out and counted in the report.
    """
    directory = Path(cache_dir) / settings_key(config)
    make_directory(directory)
    index_path = directory / "index.json"
    index = read_index(index_path)
    pixels_per_image = config.image_size[0] * config.image_size[1]
    report = SkipReport()
    cached: dict[str, CachedImage] = {}
    todo = []
    for record in records:
        entry = index.get(record.patient_id)
        path = directory / f"{check_patient_id(record.patient_id, str(directory))}.raw"  # never outside it
        if (entry and os.path.exists(record.image_path) and entry["source"] == _source_signature(record.image_path)
                and path.is_file() and path.stat().st_size == pixels_per_image):
            cached[record.patient_id] = CachedImage(str(path), entry["scale"], tuple(entry["original_size"]))
        else:
            todo.append(record)

    def work(record: Record):
        try:
            image, scale, original_size = load_preprocessed(record.image_path, config, memory_limit_mib)
        except DicomReadError as error:
            return record, None, str(error)
        path = directory / f"{record.patient_id}.raw"
        write_bytes_atomically(path, image.tobytes())
        return record, CachedImage(str(path), scale, tuple(original_size)), None

    print(f"cache {directory}: {len(todo)} image(s) to cache, {len(cached)} already cached")
    journal = journal_path(index_path)
    if not todo:
        if journal.is_file():  # an interrupted run's entries, all still valid
            write_text_atomically(index_path, json.dumps(index))
            journal.unlink()
        return cached, report
    try:
        with contextlib.closing(ordered_map(work, todo, num_workers=num_workers, ahead=2 * num_workers)) as results:
            for record, item, error in tqdm(results, total=len(todo), desc=f"caching images in {directory}",
                                            disable=not progress, unit="img"):
                if error is not None:
                    if policy == "error":
                        raise DicomReadError(f"{error} (set data.bad_file_policy: skip to leave such files out)")
                    report.add(record.image_path, error)
                    continue
                cached[record.patient_id] = item
                entry = {"source": _source_signature(record.image_path), "scale": item.scale,
                         "original_size": list(item.original_size)}
                index[record.patient_id] = entry
                append_line(journal, json.dumps([record.patient_id, entry]))  # what a kill keeps
    finally:
        write_text_atomically(index_path, json.dumps(index))
        journal.unlink(missing_ok=True)  # folded into the index just written
    return cached, report
