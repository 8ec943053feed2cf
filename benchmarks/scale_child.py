"""The measurements benchmarks/scale.py runs each in a fresh process, so that the peak resident
memory the parent reads (`os.wait4`'s ru_maxrss) is theirs alone:

    python benchmarks/scale_child.py pipeline|steps '{"config": ..., "overrides": [...], ...}'

prints one line of JSON: the training pipeline's speed over one pass of the images, or real
training steps with the wait for input timed apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time


def _load(options: dict):
    from retinanet.config import load_config
    from retinanet.builders import build_dataset
    from retinanet.data.split import prepare_split
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

    from retinanet.builders import build_anchor_set, build_loss, build_model, build_optimizer
    from retinanet.runtime.hardware import dtype_policy, prepare_runtime
    from retinanet.train.step import build_train_step

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


def main(argv=None) -> int:
    mode, options = (argv or sys.argv[1:])
    result = {"pipeline": pipeline_pass, "steps": training_steps}[mode](json.loads(options))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
