"""Caching and feeding at scale (`scripts/benchmark_scale.py`): for the first N patients of an
RSNA-layout set, `retinanet prepare`'s wall time, peak memory and cache size, the re-run with the
cache in place, the training pipeline's speed and peak memory over one pass of all N images, and
a few real training steps with the wait for input timed apart.

Every measurement runs in a fresh process (`python -m retinanet.bench.scale <mode> <json>` for the
pipeline and the steps), so that its peak resident memory is its own (`os.wait4`'s ru_maxrss).
The set of the first N patients is a directory holding their label and class rows, its image
folder a link to the full set's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from retinanet.runtime.safe_writes import make_directory, replace_atomically

LABELS, CLASSES, IMAGES = "stage_2_train_labels.csv", "stage_2_detailed_class_info.csv", "stage_2_train_images"


@dataclasses.dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_bytes: int
    stdout: str


def run_measured(command: list[str]) -> Measured:
    """Run `command`; its wall time, its peak resident memory and its output (an error if it fails)."""
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=errors, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        errors.seek(0)
        stdout, stderr = output.read(), errors.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({process.returncode}):\n{stderr[-3000:]}")
    return Measured(seconds, usage.ru_maxrss * 1024, stdout)  # ru_maxrss is in KiB on Linux


def subset_root(full_root: Path, root: Path, size: int) -> Path:
    """The first `size` patients of `full_root`'s label file as an RSNA-layout set at `root`."""
    labels = pd.read_csv(full_root / LABELS, dtype=str, keep_default_na=False)
    patients = set(labels["patientId"].drop_duplicates().iloc[:size])
    if len(patients) < size:
        raise ValueError(f"{full_root / LABELS} holds {len(patients)} patients, fewer than {size}")
    classes = pd.read_csv(full_root / CLASSES, dtype=str, keep_default_na=False)
    make_directory(root)
    for name, table in ((LABELS, labels), (CLASSES, classes)):
        subset = table[table["patientId"].isin(patients)]
        replace_atomically(root / name, lambda temporary, subset=subset: subset.to_csv(temporary, index=False))
    link = root / IMAGES
    if not link.is_symlink():
        link.symlink_to((full_root / IMAGES).resolve(), target_is_directory=True)
    return root


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _overrides(root: Path, cache_dir: Path, extra) -> list[str]:
    return [f"data.root={root}", f"data.cache_dir={cache_dir}", "data.synthetic=null",
            f"data.split_file={root / 'split.csv'}", "model.weights=none", *extra]


def prepare_command(config_path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "retinanet", "prepare", "--config", str(config_path),
            *(f"--set={override}" for override in overrides), "--no-progress"]


def child_command(mode: str, config_path, overrides: list[str], **options) -> list[str]:
    return [sys.executable, "-m", "retinanet.bench.scale", mode,
            json.dumps({"config": str(config_path), "overrides": overrides, **options})]


def measure_size(full_root: Path, work_dir: Path, size: int, config_path, extra=()) -> dict:
    """prepare (fresh cache), prepare again, one pipeline pass over all `size` images."""
    root = subset_root(full_root, work_dir / f"first_{size}", size)
    cache_dir = work_dir / f"cache_{size}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    overrides = _overrides(root, cache_dir, extra)
    first = run_measured(prepare_command(config_path, overrides))
    cache_bytes = directory_bytes(cache_dir)
    again = run_measured(prepare_command(config_path, overrides))
    passed = run_measured(child_command("pipeline", config_path, overrides))
    pipeline = json.loads(passed.stdout.strip().splitlines()[-1])
    train_images = int(re.search(r"^train\s+(\d+) images", first.stdout, re.MULTILINE).group(1))
    return {"size": size, "train_images": train_images, "prepare_seconds": first.seconds,
            "prepare_rss": first.peak_rss_bytes,
            "cache_bytes": cache_bytes, "rerun_seconds": again.seconds, "pipeline_rate": pipeline["rate"],
            "pipeline_images": pipeline["images"], "pipeline_rss": passed.peak_rss_bytes,
            "cache_dir": cache_dir, "overrides": overrides}


def measure_steps(config_path, overrides: list[str], steps: int, warmup: int) -> dict:
    measured = run_measured(child_command("steps", config_path, overrides, steps=steps, warmup=warmup))
    return {**json.loads(measured.stdout.strip().splitlines()[-1]), "rss": measured.peak_rss_bytes}


def _load(options: dict):
    from retinanet.config import load_config
    from retinanet.data.pipeline import build_dataset, prepare_split
    from retinanet.runtime import hardware

    hardware.configure_threads(*hardware.resolve_threads(0, 0, hardware.available_cores()))
    config = load_config(options["config"], options["overrides"])
    prepared = prepare_split(config, progress=False)
    return config, prepared, build_dataset


def pipeline_pass(options: dict) -> dict:
    """The training pipeline (augmentation, targets, batches) over all images once, from the cache."""
    config, prepared, build_dataset = _load(options)
    records = prepared.train + prepared.validation
    batch_size = config.training.batch_size
    iterator = iter(build_dataset(config, "train", records=records, progress=False))
    next(iterator)  # tracing, the first reads
    batches = max(1, math.ceil(len(records) / batch_size) - 1)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return {"rate": batches * batch_size / (time.perf_counter() - start), "images": (batches + 1) * batch_size}


def training_steps(options: dict) -> dict:
    """Real training steps fed by the pipeline; the wait in next() and the step timed apart."""
    import tensorflow as tf

    from retinanet.builders import build_anchor_set, build_loss, build_model
    from retinanet.runtime.hardware import dtype_policy, prepare_runtime
    from retinanet.train.trainer import build_optimizer, build_train_step

    config, prepared, build_dataset = _load(options)
    runtime = config.runtime  # `auto` resolved for this device, as training does
    precision, _ = prepare_runtime(runtime.mixed_precision, runtime.intra_op_threads, runtime.inter_op_threads)
    config = dataclasses.replace(config, runtime=dataclasses.replace(runtime, mixed_precision=precision.policy))
    with dtype_policy(config.runtime.mixed_precision):
        model = build_model(config)
    optimizer = build_optimizer(config.training, precision=config.runtime.mixed_precision)
    step = build_train_step(config, tf.distribute.get_strategy(), model, optimizer,
                            build_loss(config, build_anchor_set(config)))
    iterator = iter(build_dataset(config, "train", records=prepared.train, progress=False))
    waits, totals = [], []
    for index in range(options["warmup"] + options["steps"]):
        start = time.perf_counter()
        batch = next(iterator)
        fed = time.perf_counter()
        step(batch)["loss/total"].numpy()
        if index >= options["warmup"]:
            waits.append(fed - start)
            totals.append(time.perf_counter() - start)
    return {"step_seconds": sum(totals) / len(totals), "wait_seconds": sum(waits) / len(waits),
            "batch_size": config.training.batch_size, "precision": config.runtime.mixed_precision}


def format_report(rows: list[dict], steps: dict | None, *, cpu: str, gpu_step_seconds: float) -> str:
    mib = 2**20
    lines = [f"CPU kind: {cpu}; prepare and the pipeline as configs/rsna.yaml (512 px, CLAHE, augmentation, "
             f"targets, batch {steps['batch_size'] if steps else 8}); each in a fresh process", "",
             "| patients | prepare wall | images/s | prepare peak RSS | cache on disk | re-run, cache in place "
             "| pipeline from cache | pipeline pass peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['size']:,} | {row['prepare_seconds']:.1f} s | {row['size'] / row['prepare_seconds']:.1f} "
                     f"| {row['prepare_rss'] / mib:.0f} MiB | {row['cache_bytes'] / mib:,.1f} MiB "
                     f"| {row['rerun_seconds']:.1f} s | {row['pipeline_rate']:.0f} images/s "
                     f"| {row['pipeline_rss'] / mib:.0f} MiB |")
    if steps:
        step, wait, batch = steps["step_seconds"], steps["wait_seconds"], steps["batch_size"]
        needed = batch / gpu_step_seconds
        epoch_steps = rows[-1]["train_images"] // batch
        lines += ["", f"training step on this CPU ({steps['precision']}, batch {batch}): {step:.2f} s "
                      f"({batch / step:.2f} images/s), of which {wait * 1000:.1f} ms ({100 * wait / step:.1f} %) "
                      f"waiting for input; peak RSS {steps['rss'] / mib:.0f} MiB",
                  f"assumed GPU step: {gpu_step_seconds} s per batch of {batch} -> needs {needed:.0f} images/s; "
                  f"the slowest pipeline above gives {min(row['pipeline_rate'] for row in rows):.0f} images/s",
                  f"one epoch of the first {rows[-1]['size']:,} patients' training split on this CPU: "
                  f"{epoch_steps:,} steps x {step:.2f} s = {epoch_steps * step / 3600:.1f} h"]
    return "\n".join(lines)


def main(argv=None) -> int:
    mode, options = (argv or sys.argv[1:])
    result = {"pipeline": pipeline_pass, "steps": training_steps}[mode](json.loads(options))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
