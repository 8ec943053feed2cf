"""The order of training examples as a pure function of (seed, position in the stream).

Position p of the endless training stream is the p-th example of the run: global step
`p // batch_size`, slot `p % batch_size` of that step's global batch. Which record it shows
and the seed of its augmentation depend on (seed, p) only, so that
- a resumed run starts its stream at `step * batch_size` and sees what an uninterrupted run
  would have seen (the data position is the optimizer's step, already in the checkpoint);
- several workers each read their own slots of every global batch, none twice, and together
  see the same examples as one worker with the whole batch.

Each epoch is a permutation drawn by `tf.random.experimental.index_shuffle` (a stateless
bijection of [0, n - 1] for a seed): nothing is materialised and any position is reached
without reading the ones before it. With a positive fraction f, position p shows an image with
boxes when floor((p + 1) f) > floor(p f): exactly that share of every stretch of the stream,
each kind drawn from its own permutations.
"""

from __future__ import annotations

import tensorflow as tf

# Salts of the stateless seeds, so that the streams of one seed are independent of each other.
ALL_RECORDS, POSITIVES, NEGATIVES, AUGMENTATION = 0, 1, 2, 3


def worker_positions(start_step: int, global_batch: int, worker: int = 0, num_workers: int = 1) -> tf.data.Dataset:
    """Endless int64 stream of the positions worker `worker` of `num_workers` reads from step `start_step` on.

    Each worker reads a contiguous share of `global_batch / num_workers` slots of every global batch.
    """
    if global_batch % num_workers:
        raise ValueError(f"the global batch {global_batch} is not divisible by {num_workers} workers")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not one of {num_workers} workers")
    share = global_batch // num_workers

    def position(local_index):
        step, slot = local_index // share, local_index % share
        return step * global_batch + worker * share + slot

    return tf.data.Dataset.counter(start_step * share, dtype=tf.int64).map(position)


def permuted(index, size: int, seed: int, salt: int):
    """Entry `index` of the endless sequence of shuffled epochs of [0, size): int64 scalar."""
    epoch, offset = index // size, index % size
    epoch_seed = tf.stack([tf.constant(seed, tf.int64) * 4 + salt, epoch])
    return tf.random.experimental.index_shuffle(offset, tf.cast(epoch_seed, tf.int64), size - 1)


def record_at(position, positive_indices: list[int], negative_indices: list[int], seed: int,
              positive_fraction: float):
    """The record index (int64 scalar tensor) shown at stream position `position`.

    `positive_indices`, `negative_indices`: record indices of the images with and without boxes.
    A fraction of 0, or a data set lacking one of the kinds, draws from all records as they come.
    """
    everything = sorted([*positive_indices, *negative_indices])
    if not positive_fraction or not positive_indices or not negative_indices:
        return tf.gather(tf.constant(everything, tf.int64), permuted(position, len(everything), seed, ALL_RECORDS))
    fraction = tf.constant(positive_fraction, tf.float64)
    before = tf.cast(tf.floor(tf.cast(position, tf.float64) * fraction), tf.int64)  # positives before p
    through = tf.cast(tf.floor(tf.cast(position + 1, tf.float64) * fraction), tf.int64)
    positives, negatives = tf.constant(positive_indices, tf.int64), tf.constant(negative_indices, tf.int64)
    return tf.cond(
        through > before,
        lambda: tf.gather(positives, permuted(before, len(positive_indices), seed, POSITIVES)),
        lambda: tf.gather(negatives, permuted(position - before, len(negative_indices), seed, NEGATIVES)))


def augmentation_seed(position, seed: int):
    """int64 [2]: the stateless seed of the augmentation of the example at `position`."""
    return tf.stack([tf.constant(seed, tf.int64) * 4 + AUGMENTATION, tf.cast(position, tf.int64)])

