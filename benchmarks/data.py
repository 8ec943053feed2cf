"""Input-pipeline throughput at 512 px: DICOM reading alone vs the full pipeline, from
DICOMs and from the preprocessed cache.

python benchmarks/data.py [--data DIR] [--images N] [--workers N]

Without --data it generates a synthetic RSNA-format set (1024 px JPEG DICOMs) in a
temporary directory. Prints images/s and the ratios; the targets are (b)/(a) >= 0.7 and
(c) >= 300 images/s on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from retinanet.runtime import hardware
from retinanet.config import load_config
from retinanet.data.dicom import read_dicom
from retinanet.builders import build_dataset
from retinanet.data.split import prepare_split
from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

REPO = Path(__file__).resolve().parent.parent


def rate(count: int, seconds: float) -> float:
    return count / seconds


def time_dataset(dataset, num_batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # warm-up: tracing, first file reads, prefetch start
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return rate(num_batches * batch_size, time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an RSNA-layout directory (default: generate a synthetic one)")
    parser.add_argument("--images", type=int, default=200, help="synthetic images to generate")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0,
                        help="readers and augmenters at once (data.num_parallel_calls; 0 = one per core)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark_data_") as scratch:
        run(args, Path(scratch))


def run(args, workdir: Path) -> None:
    data_root = Path(args.data) if args.data else workdir / "rsna"
    if not args.data:
        generate_synthetic_rsna(data_root, num_train=args.images, num_test=0, size=1024, seed=0)
    overrides = [f"data.root={data_root}", f"data.cache_dir={workdir / 'cache'}", "data.synthetic=null",
                 f"data.split_file={workdir / 'split.csv'}", "preprocessing.image_size=[512,512]",
                 f"training.batch_size={args.batch_size}", f"data.num_parallel_calls={args.workers}"]
    config = load_config(REPO / "configs" / "rsna.yaml", overrides)
    records = prepare_split(config, progress=False).train
    workers = hardware.workers(config.data.num_parallel_calls)
    batches = max(1, len(records) // args.batch_size - 1)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read_dicom, [r.image_path for r in records[:workers]]))
        start = time.perf_counter()
        list(pool.map(read_dicom, [r.image_path for r in records]))
        read_rate = rate(len(records), time.perf_counter() - start)

    direct = build_dataset(load_config(REPO / "configs" / "rsna.yaml", overrides + ["data.use_cache=false"]),
                           "train", records=records, progress=False)
    direct_rate = time_dataset(direct, batches, args.batch_size)
    cached = build_dataset(config, "train", records=records, progress=False)  # builds the cache first
    cached_rate = time_dataset(cached, 4 * batches, args.batch_size)

    print(f"\n{len(records)} images, 1024 px JPEG DICOMs -> 512 px, {workers} parallel readers, "
          f"batch {args.batch_size}")
    print(f"(a) read_dicom alone               {read_rate:8.1f} images/s")
    print(f"(b) full pipeline from DICOM       {direct_rate:8.1f} images/s   (b)/(a) = {direct_rate / read_rate:.2f}"
          "  (target >= 0.7)")
    print(f"(c) full pipeline from the cache   {cached_rate:8.1f} images/s   (c)/(a) = {cached_rate / read_rate:.2f}"
          "  (target >= 300 images/s)")


if __name__ == "__main__":
    main()
