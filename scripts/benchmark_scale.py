"""Caching and feeding at scale: `retinanet prepare` and the training pipeline on the first N
patients of an RSNA-layout set, for several N, and a few real training steps.

python scripts/benchmark_scale.py --data /work/scale_data/full --sizes 2000,8000,26684

Per N: prepare's wall time, images/s and peak resident memory (fresh cache), the cache's size on
disk, a re-run with the cache in place, the pipeline's images/s from the cache and its peak memory
over one pass of all N images. Then training steps at the config's settings (the first N's
cache), the share of the step spent waiting for input, and what an assumed GPU step needs.
Each cache is removed after its N is measured unless --keep-caches. Logic: retinanet/bench/scale.py.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

from retinanet.bench.scale import format_report, measure_size, measure_steps

REPO = Path(__file__).resolve().parent.parent


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
