"""Caching and feeding at scale: `retinanet prepare` and the training pipeline on the first N
patients of an RSNA-layout set, for several N, and a few real training steps.

python benchmarks/scale.py --data /work/scale_data/full --sizes 2000,8000,26684

Per N: prepare's wall time, images/s and peak resident memory (fresh cache), the cache's size on
disk, a re-run with the cache in place, the pipeline's images/s from the cache and its peak memory
over one pass of all N images. Then training steps at the config's settings (the first N's
cache), the share of the step spent waiting for input, and what an assumed GPU step needs.
Each cache is removed after its N is measured unless --keep-caches.

Every measurement runs in a fresh process (`python benchmarks/scale_child.py <mode> <json>` for
the pipeline and the steps), so that its peak resident memory is its own (`os.wait4`'s ru_maxrss).
The set of the first N patients is a directory holding their label and class rows, its image
folder a link to the full set's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().with_name("scale_child.py")
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
    return [sys.executable, str(CHILD), mode,
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


def format_report(rows: list[dict], steps: dict | None, *, cpu: str, gpu_step_seconds: float) -> str:
    mib = 2**20
    lines = [f"CPU kind: {cpu}; prepare and the pipeline as configs/rsna.yaml (512 px, CLAHE, augmentation, "
             f"targets, batch {steps['batch_size'] if steps else 8}); each in a fresh process", "",
             "| patients | prepare wall | images/s | prepare peak RSS | cache on disk | re-run, cache in place "
             "| pipeline from cache | pipeline pass peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['size']:,} | {row['prepare_seconds']:.1f} s | {row['size'] / row['prepare_seconds']:.1f} "
                     f"| {row['prepare_rss'] / mib:.0f} MiB | {row['cache_bytes'] / mib:,.2f} MiB "
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


def cpu_kind() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(re.findall(r"\b(amx_bf16|avx512_bf16|avx2)\b", text))
    strongest = next((flag for flag in ("amx_bf16", "avx512_bf16", "avx2") if flag in flags), "no avx2")
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return f"{model.group(1) if model else 'unknown CPU'} ({strongest})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an RSNA-layout set (e.g. made by retinanet synth --from-labels)")
    parser.add_argument("--sizes", default="2000,8000,26684", help="comma-separated patient counts, ascending")
    parser.add_argument("--work", help="directory for the subsets and caches (default: a temporary one)")
    parser.add_argument("--config", default=str(REPO / "configs" / "rsna.yaml"))
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (0: none)")
    parser.add_argument("--warmup", type=int, default=1, help="training steps before timing (the first traces)")
    parser.add_argument("--gpu-step", type=float, default=0.25, help="assumed GPU seconds per batch (default 0.25)")
    parser.add_argument("--keep-caches", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark_scale_") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        rows, steps = [], None
        for size in (int(text) for text in args.sizes.split(",")):
            row = measure_size(Path(args.data), work, size, args.config, args.set)
            if steps is None and args.steps:
                steps = measure_steps(args.config, row["overrides"], args.steps, args.warmup)
            if not args.keep_caches:
                shutil.rmtree(row["cache_dir"])
            rows.append(row)
            # The table so far after each N: a long run interrupted keeps what it measured.
            print(format_report(rows, steps, cpu=cpu_kind(), gpu_step_seconds=args.gpu_step) + "\n", flush=True)


if __name__ == "__main__":
    main()
