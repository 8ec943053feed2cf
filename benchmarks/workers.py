"""Training throughput with 1 and with N workers on this machine (scripts/launch_workers.py).

python benchmarks/workers.py --config configs/demo.yaml --workers 2 --steps 30

Each run trains `--steps` steps of the config (global batch `training.batch_size`, validation
only at the end) into a temporary run directory; the figure is the median of the logged
images per second after the first window (which includes tracing). On one machine the workers
share its cores: the figure then measures the overhead of the collectives, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retinanet.config import ConfigError, load_config, save_config

REPOSITORY = Path(__file__).resolve().parents[1]


def throughput(run_dir: Path) -> float:
    """Median images per second of the logged training windows after the first."""
    lines = [entry for entry in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
             if entry["split"] == "train"]
    rates = [entry["images_per_second"] for entry in lines[1:]] or [entry["images_per_second"] for entry in lines]
    return statistics.median(rates)


def run(config_path: Path, run_dir: Path, workers: int, log_dir: Path) -> tuple[float, float]:
    """(images per second, wall seconds) of one training command."""
    train = [sys.executable, str(REPOSITORY / "scripts" / "train.py"), "--config", str(config_path),
             "--run-dir", str(run_dir), "--no-progress"]
    command = train if workers == 1 else [sys.executable, str(REPOSITORY / "scripts" / "launch_workers.py"),
                                          "--workers", str(workers), "--log-dir", str(log_dir), "--", *train]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return throughput(run_dir), time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--workers", type=int, default=2, help="workers of the second run (default 2)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        overrides = [*args.set, f"training.steps={args.steps}", f"training.validate_every={args.steps}",
                     f"training.checkpoint_every={args.steps}", f"training.log_every={args.log_every}",
                     "training.warmup_steps=1", "training.time_budget_minutes=0"]
        configs = {workers: load_config(args.config, [*overrides, f"training.strategy={strategy}"])
                   for workers, strategy in ((1, "default"), (args.workers, "multi_worker"))}
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="benchmark-workers-") as scratch:
        results = {}
        for workers, config in configs.items():
            config_path = Path(scratch) / f"workers{workers}.yaml"
            save_config(config, config_path)
            results[workers] = run(config_path, Path(scratch) / f"run{workers}", workers, Path(scratch) / "logs")
    batch = configs[1].training.batch_size
    print(f"global batch {batch}, {args.steps} steps, input {configs[1].preprocessing.image_size}")
    print(f"{'workers':>8} {'images/s':>10} {'wall s':>8} {'vs 1 worker':>12}")
    for workers, (rate, wall) in results.items():
        print(f"{workers:>8} {rate:>10.2f} {wall:>8.1f} {rate / results[1][0]:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
