"""On-disk cache of preprocessed (CLAHE'd, letterboxed) images.

Decoding a 1024 px JPEG DICOM and CLAHE cost far more than a training step's input work, so
each image is processed once and stored as raw uint8 pixels at the network input size
(a 512 px image is 256 KiB; reading it back costs nothing next to decoding a PNG, which
kept the cached pipeline below 100 images/s on two cores). The cache lives
in `<cache_dir>/<settings key>/`, where the key hashes the preprocessing settings: changing
them starts a new cache. `index.json` records each image's source file (size and mtime), so
an image whose DICOM changed is rebuilt and the rest are reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retinanet.config import PreprocessingConfig
from retinanet.data.dicom import DicomReadError, read_image
from retinanet.data.preprocess import preprocess_image
from retinanet.data.rsna import Record, SkipReport

CACHE_VERSION = 2


@dataclass(frozen=True)
class CachedImage:
    path: str  # raw uint8 pixels, [height, width] of the network input
    scale: float  # original -> input pixels
    original_size: tuple[int, int]  # (height, width)


def settings_key(config: PreprocessingConfig) -> str:
    settings = {"version": CACHE_VERSION, "image_size": list(config.image_size), "clahe": config.clahe,
                "clip_limit": config.clahe_clip_limit, "tile_grid": config.clahe_tile_grid}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _source_signature(path: str) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def load_preprocessed(path: str, config: PreprocessingConfig):
    """Read and preprocess one image file -> (uint8 [H, W], scale, (height, width))."""
    image = read_image(path)
    processed, scale = preprocess_image(image, config)
    return processed, scale, image.shape[:2]


def build_cache(records: list[Record], config: PreprocessingConfig, cache_dir: str | Path, *,
                policy: str = "error", num_workers: int = 2, progress: bool = True
                ) -> tuple[dict[str, CachedImage], SkipReport]:
    """Make sure every record's image is cached; return {patient_id: CachedImage} and the skips.

    An unreadable image raises DicomReadError under policy "error" (the images cached before it
    stay in the index); under "skip" it is left out and counted in the report.
    """
    directory = Path(cache_dir) / settings_key(config)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    report = SkipReport()
    cached: dict[str, CachedImage] = {}
    todo = []
    for record in records:
        entry = index.get(record.patient_id)
        path = directory / f"{record.patient_id}.raw"
        if (entry and os.path.exists(record.image_path) and entry["source"] == _source_signature(record.image_path)
                and path.is_file()):
            cached[record.patient_id] = CachedImage(str(path), entry["scale"], tuple(entry["original_size"]))
        else:
            todo.append(record)

    def work(record: Record):
        try:
            image, scale, original_size = load_preprocessed(record.image_path, config)
        except DicomReadError as error:
            return record, None, str(error)
        path = directory / f"{record.patient_id}.raw"
        temporary = path.with_suffix(".tmp")
        image.tofile(temporary)
        temporary.replace(path)
        return record, CachedImage(str(path), scale, tuple(original_size)), None

    if not todo:
        return cached, report
    try:
        with ThreadPoolExecutor(num_workers) as pool:
            results = pool.map(work, todo)
            for record, item, error in tqdm(results, total=len(todo), desc=f"caching images in {directory}",
                                            disable=not progress, unit="img"):
                if error is not None:
                    if policy == "error":
                        raise DicomReadError(f"{error} (set data.bad_file_policy: skip to leave such files out)")
                    report.add(record.image_path, error)
                    continue
                cached[record.patient_id] = item
                index[record.patient_id] = {"source": _source_signature(record.image_path), "scale": item.scale,
                                            "original_size": list(item.original_size)}
    finally:
        temporary = index_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(index))
        temporary.replace(index_path)
    return cached, report
