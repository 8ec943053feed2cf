"""Training-step speed: the project beside the keras-io RetinaNet example (Keras 3, and Keras 2
through tf_keras when the `peers` extra is installed), same network size, batch and precision.

python benchmarks/train_step.py [--size 512 --batch 2] [--rounds 3 --steps 2] [--precisions float32,auto]
python benchmarks/train_step.py --threads      # the project's step under several thread settings

Models have random weights (`configs/rsna.yaml` model). Precisions default to float32 plus the one
`auto` picks on this machine; bfloat16 on a CPU without it is emulated and left out unless asked.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

from retinanet.runtime import hardware

REPO = Path(__file__).resolve().parent.parent
THREAD_SETTINGS = ((2, 2), (2, 1), (1, 1), (1, 2))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "rsna.yaml"))
    parser.add_argument("--size", type=int, default=512, help="square input side (default 512)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precisions", default="float32,auto",
                        help="comma-separated: float32, mixed_bfloat16, mixed_float16 or auto (this machine's)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each implementation takes")
    parser.add_argument("--steps", type=int, default=2, help="steps per turn")
    parser.add_argument("--no-peers", action="store_true", help="the project's step alone")
    parser.add_argument("--threads", action="store_true", help="sweep intra-/inter-op threads (one process each)")
    parser.add_argument("--intra-op", type=int, default=0, help="intra-op threads (0 = auto)")
    parser.add_argument("--inter-op", type=int, default=0, help="inter-op threads (0 = auto)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def precisions(requested: str, auto_choice: str) -> list[str]:
    chosen = [auto_choice if name == "auto" else name for name in requested.split(",")]
    return list(dict.fromkeys(chosen))


def peers() -> dict:
    """{label: keras module} of the peers importable here."""
    found = {"keras-io example, Keras 3": importlib.import_module("keras")}
    try:
        found["keras-io example, tf_keras"] = importlib.import_module("tf_keras")
    except ImportError:
        pass
    return found


def measure(args) -> list[dict]:
    import numpy as np

    from training import fixed_batch, peer_runner, project_runner, time_in_turns
    from retinanet.config import load_config

    rows = []
    auto = hardware.choose_precision("auto", hardware.detect_device()).policy
    for precision in precisions(args.precisions, auto):
        config = load_config(args.config, [f"preprocessing.image_size=[{args.size},{args.size}]",
                                           f"training.batch_size={args.batch}", "model.weights=none",
                                           f"runtime.mixed_precision={precision}"])
        batch = fixed_batch(config, np.random.default_rng(0))
        runners = {"project": project_runner(config, batch)}
        if not args.no_peers:
            runners.update({label: peer_runner(config, batch, module) for label, module in peers().items()})
        seconds = time_in_turns(runners, rounds=args.rounds, steps=args.steps)
        best_peer = min((value for name, value in seconds.items() if name != "project"), default=None)
        for name, value in seconds.items():
            rows.append({"precision": precision, "implementation": name, "seconds": value,
                         "images_per_second": args.batch / value,
                         "speedup_vs_best_peer": best_peer / value if best_peer else None})
    return rows


def thread_sweep(args) -> None:
    print("| intra-op | inter-op | s/step | images/s |")
    print("|---|---|---|---|")
    for intra, inter in THREAD_SETTINGS:
        command = [sys.executable, __file__, "--config", args.config, "--size", str(args.size), "--batch",
                   str(args.batch), "--precisions", args.precisions.split(",")[-1], "--rounds", str(args.rounds),
                   "--steps", str(args.steps), "--no-peers", "--intra-op", str(intra), "--inter-op", str(inter),
                   "--json"]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(completed.stdout.strip().splitlines()[-1])[0]
        print(f"| {intra} | {inter} | {row['seconds']:.3f} | {row['images_per_second']:.2f} |", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    threads = hardware.configure_threads(*hardware.resolve_threads(args.intra_op, args.inter_op,
                                                                   hardware.available_cores()))
    if args.threads:
        thread_sweep(args)
        return
    rows = measure(args)
    if args.json:
        print(json.dumps(rows))
        return
    device = hardware.detect_device()
    print(hardware.describe(device, hardware.choose_precision("auto", device), threads))
    print(f"{args.size} px, batch {args.batch}, median of {args.rounds} x {args.steps} steps in turns\n")
    print("| precision | implementation | s/step | images/s | speed-up vs best peer |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['speedup_vs_best_peer']:.2f}x" if row["speedup_vs_best_peer"] else "-"
        print(f"| {row['precision']} | {row['implementation']} | {row['seconds']:.3f} | "
              f"{row['images_per_second']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
