"""Training-step speed on this machine: 512 px batch 2 and 256 px batch 4, float32 vs
mixed_bfloat16, with and without XLA (jit_compile).

python scripts/benchmark_train.py [--steps 5] [--config configs/rsna.yaml]

Each setting builds the model from the config (random weights), runs the real training step
(`retinanet.training.build_train_step`) on a fixed batch with encoded targets, warms up, and
reports the median seconds per step. Settings that fail (XLA cannot compile some ops on CPU)
are reported as such.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from retinanet.anchors import generate_anchors
from retinanet.config import load_config
from retinanet.losses import loss_from_config
from retinanet.model.retinanet import build_model_from_config
from retinanet.targets import LabelEncoder
from retinanet.training import build_optimizer, build_train_step, dtype_policy

REPO = Path(__file__).resolve().parent.parent


def fixed_batch(config, batch_size: int, rng) -> dict:
    height, width = config.preprocessing.image_size
    encoder = LabelEncoder(generate_anchors((height, width), config.anchors))
    boxes = np.array([[0.2 * width, 0.2 * height, 0.45 * width, 0.6 * height]], np.float32)
    targets = [encoder(boxes if i % 2 == 0 else np.zeros((0, 4)), np.zeros(1 if i % 2 == 0 else 0))
               for i in range(batch_size)]
    return {"images": tf.constant(rng.normal(size=(batch_size, height, width, config.preprocessing.channels)),
                                  tf.float32),
            "targets": tf.stack(targets), "image_labels": tf.constant([1.0, 0.0] * (batch_size // 2))}


def seconds_per_step(config, steps: int) -> float:
    strategy = tf.distribute.get_strategy()
    with dtype_policy(config.training.mixed_precision):
        model = build_model_from_config(config)
    optimizer = build_optimizer(config.training)
    step = build_train_step(config, strategy, model, optimizer, loss_from_config(config))
    batch = fixed_batch(config, config.training.batch_size, np.random.default_rng(0))
    for _ in range(2):
        step(batch)["loss/total"].numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(batch)["loss/total"].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "rsna.yaml"))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    print("| input | batch | precision | XLA | s/step | images/s | speed-up vs float32 |")
    print("|---|---|---|---|---|---|---|")
    for size, batch in ((512, 2), (256, 4)):
        baseline = None
        for precision in ("float32", "mixed_bfloat16"):
            for jit in (False, True):
                overrides = [f"preprocessing.image_size=[{size},{size}]", f"training.batch_size={batch}",
                             f"training.mixed_precision={precision}", f"training.jit_compile={str(jit).lower()}",
                             "model.weights=none"]
                config = load_config(args.config, overrides)
                setting = f"| {size} | {batch} | {precision} | {'on' if jit else 'off'} |"
                try:
                    seconds = seconds_per_step(config, args.steps)
                except Exception as error:  # XLA compile failures are a result, not a crash
                    print(f"{setting} - | - | failed: {type(error).__name__} |", flush=True)
                    continue
                baseline = baseline or seconds
                print(f"{setting} {seconds:.3f} | {batch / seconds:.2f} | {baseline / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
