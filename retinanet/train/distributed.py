"""Distribution strategies and the roles of workers in a multi-worker run.

`training.strategy: multi_worker` trains on `tf.distribute.MultiWorkerMirroredStrategy`, its
cluster read from the `TF_CONFIG` environment variable by TensorFlow's standard resolver
(scripts/launch_workers.py writes it for a cluster on one machine; the README shows it for
several). Every worker runs the same training loop; the chief alone (worker 0, or the task of
type "chief") writes the run directory. The others write their checkpoints and logs to a
directory of their own inside it, `worker-<index>.tmp`, removed at the end, as TensorFlow's
multi-worker guide prescribes: every worker must take part in a checkpoint save, but only one copy
is kept. One left by a killed worker is replaced when that worker starts again (`--resume`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import tensorflow as tf


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy of `training.strategy`. Multi-worker must be made before TensorFlow runs an op."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if not resolver.cluster_spec().as_dict():
            raise ValueError("training.strategy: multi_worker needs the TF_CONFIG environment variable "
                             "(start the workers with scripts/launch_workers.py, or see the README's "
                             "'Several workers' section)")
        # Ring all-reduce runs on CPUs as well as GPUs (NCCL needs GPUs).
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    return tf.distribute.get_strategy()


def worker_role(strategy: tf.distribute.Strategy) -> tuple[int, int, bool]:
    """(index of this worker, number of workers, whether it is the chief) under `strategy`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1, True
    spec = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, resolver.task_id
    num_workers = len(spec.get("chief", [])) + len(spec.get("worker", []))
    if "chief" in spec:
        index = 0 if task_type == "chief" else task_id + 1
        return index, num_workers, task_type == "chief"
    return task_id, num_workers, task_id == 0


def write_directory(run_dir: Path, worker: int, is_chief: bool) -> Path:
    """Where this worker writes: the run directory for the chief, `worker-<index>.tmp` inside it
    for the others."""
    return Path(run_dir) if is_chief else Path(run_dir) / f"worker-{worker}.tmp"


def remove_write_directory(directory: Path, run_dir: Path) -> None:
    """Remove a worker's temporary directory (never the run directory itself)."""
    if Path(directory).resolve() != Path(run_dir).resolve():
        shutil.rmtree(directory, ignore_errors=True)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here: an all-reduce of one number across the cluster."""
    if worker_role(strategy)[1] > 1:
        ones = strategy.run(lambda: tf.constant(1.0))
        strategy.reduce("sum", ones, axis=None).numpy()
