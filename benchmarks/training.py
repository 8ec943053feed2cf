"""Training-step speed of the project beside its peers, measured in one process on one batch.

Every implementation trains on the same fixed batch (images and encoded targets) at the same
input size, batch and precision. After two warm-up steps (the first traces the graph) the
implementations take turns, `steps` steps each per round, so that a load change on the machine
hits all of them alike; the figure is the median step.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf

from retinanet.config import Config
from retinanet.runtime.hardware import dtype_policy
from retinanet.builders import build_anchor_set, build_loss, build_model
from retinanet.detection.targets import LabelEncoder
from retinanet.builders import build_optimizer
from retinanet.train.step import build_train_step

from peer import peer_train_step


def fixed_batch(config: Config, rng: np.random.Generator) -> dict:
    """Random images; every other image holds one box, the rest none (RSNA is mostly negatives)."""
    height, width = config.preprocessing.image_size
    batch_size = config.training.batch_size
    encoder = LabelEncoder(build_anchor_set(config).boxes)
    boxes = np.array([[0.2 * width, 0.2 * height, 0.45 * width, 0.6 * height]], np.float32)
    targets = [encoder(boxes if i % 2 == 0 else np.zeros((0, 4)), np.zeros(1 if i % 2 == 0 else 0))
               for i in range(batch_size)]
    return {"images": tf.constant(rng.normal(size=(batch_size, height, width, config.preprocessing.channels)),
                                  tf.float32),
            "targets": tf.stack(targets),
            "image_labels": tf.constant([float(i % 2 == 0) for i in range(batch_size)])}


def project_runner(config: Config, batch: dict):
    """A function running one of the project's training steps (`retinanet.train.trainer`) on `batch`."""
    with dtype_policy(config.runtime.mixed_precision):
        model = build_model(config)
    optimizer = build_optimizer(config.training, precision=config.runtime.mixed_precision)
    loss = build_loss(config, build_anchor_set(config))
    step = build_train_step(config, tf.distribute.get_strategy(), model, optimizer, loss)
    return lambda: step(batch)["loss/total"].numpy()


def peer_runner(config: Config, batch: dict, keras_module):
    """A function running one training step of the keras-io example (benchmarks/peer.py) on `batch`."""
    height, width = config.preprocessing.image_size
    step = peer_train_step(keras_module, (height, width, config.preprocessing.channels),
                           precision=config.runtime.mixed_precision)
    return lambda: float(np.asarray(step(batch["images"], batch["targets"])))


def time_in_turns(runners: dict, rounds: int = 3, steps: int = 2, warmup: int = 2) -> dict:
    """{name: runner} -> {name: median seconds per step}, the runners taking turns."""
    for runner in runners.values():
        for _ in range(warmup):
            runner()
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            for _ in range(steps):
                start = time.perf_counter()
                runner()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}
